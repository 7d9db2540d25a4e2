{{/*
Named helpers of finetune-platform: names, labels, image references, the platform's environment, the pod
security and volume blocks every pod shares, and the validation that refuses an unsafe production install.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "finetune-platform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: fullnameOverride, else "<release>-<chart>" (just the release when it holds the chart name). */}}
{{- define "finetune-platform.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "finetune-platform.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects. Usage: include "finetune-platform.componentName" (list $ "api") */}}
{{- define "finetune-platform.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "finetune-platform.fullname" $root | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "finetune-platform.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "finetune-platform.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune-platform
{{- end -}}

{{/* Labels that select one component's pods. Usage: include "finetune-platform.selectorLabels" (list $ "api") */}}
{{- define "finetune-platform.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "finetune-platform.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Object labels plus the component. Usage: include "finetune-platform.componentLabels" (list $ "api") */}}
{{- define "finetune-platform.componentLabels" -}}
{{ include "finetune-platform.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/*
Image reference "registry/repository:tag". The registry falls back to image.registry, the tag to image.tag and
then to the chart's appVersion. Usage: include "finetune-platform.image" (list $ .Values.api.image)
*/}}
{{- define "finetune-platform.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $registry := default $root.Values.image.registry $image.registry -}}
{{- $tag := default (default $root.Chart.AppVersion $root.Values.image.tag) $image.tag -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry $image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret the pods read: secrets.existingSecret, else the chart's own. */}}
{{- define "finetune-platform.secretName" -}}
{{- default (include "finetune-platform.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/*
A secret one of the chart's Secrets holds: the value given in values, else the one that Secret already holds (so
an upgrade keeps it), else random letters and digits (32, or "length"). "secret" names the Secret; default: the
chart's own. Memoised in .Values for the render, so the Secret, the migration hook's Secret and the checksum
annotations all see one value. `helm template` cannot look the Secret up: every render generates new ones (GitOps
tools that render that way: set the values, or use secrets.existingSecret). Usage: include
"finetune-platform.generatedSecret" (dict "root" $ "key" "REDIS_PASSWORD" "value" .Values.secrets.redisPassword)
*/}}
{{- define "finetune-platform.generatedSecret" -}}
{{- $root := .root -}}
{{- $secret := default (include "finetune-platform.fullname" $root) .secret -}}
{{- $memoKey := printf "%s/%s" $secret .key -}}
{{- $memo := default (dict) (get $root.Values "_generatedSecrets") -}}
{{- if not (hasKey $memo $memoKey) -}}
{{- $value := toString (default "" .value) -}}
{{- if not $value -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace $secret -}}
{{- $value = dig "data" .key "" (default (dict) $existing) | b64dec -}}
{{- end -}}
{{- if not $value -}}
{{- $value = randAlphaNum (int (default 32 .length)) -}}
{{- end -}}
{{- $_ := set $memo $memoKey $value -}}
{{- $_ := set $root.Values "_generatedSecrets" $memo -}}
{{- end -}}
{{- get $memo $memoKey -}}
{{- end -}}

{{/* The PostgreSQL role the app's pods connect as; the migrations (run as postgresql.url's owner) create it. */}}
{{- define "finetune-platform.appDatabaseUser" -}}
finetune_app
{{- end -}}

{{/* DATABASE_URL of the app's pods: postgresql.url with finetune_app and its password instead of the owner. */}}
{{- define "finetune-platform.appDatabaseUrl" -}}
{{- $url := urlParse .Values.postgresql.url -}}
{{- $password := include "finetune-platform.generatedSecret" (dict "root" . "key" "DATABASE_APP_PASSWORD" "value" .Values.postgresql.appPassword) -}}
{{- $userinfo := printf "%s:%s" (include "finetune-platform.appDatabaseUser" .) $password -}}
{{- urlJoin (dict "scheme" $url.scheme "host" $url.host "path" $url.path "query" $url.query "userinfo" $userinfo) -}}
{{- end -}}

{{/* The MLflow user the platform's pods log in as: admin_username of files/mlflow/basic_auth.ini. */}}
{{- define "finetune-platform.mlflowUsername" -}}
finetune-platform
{{- end -}}

{{/*
NetworkPolicy peers: the platform's own pods (api, both worker pools, inference) of this release, by label.
*/}}
{{- define "finetune-platform.platformPeers" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ include "finetune-platform.name" . }}
      app.kubernetes.io/instance: {{ .Release.Name }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values: [api, worker, inference]
{{- end -}}

{{/* Name of the shared /data claim. */}}
{{- define "finetune-platform.dataClaimName" -}}
{{- default (include "finetune-platform.componentName" (list . "data")) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* Whether the app database is PostgreSQL (a URL given, or an existing Secret that must hold DATABASE_URL). */}}
{{- define "finetune-platform.externalDatabase" -}}
{{- if or .Values.secrets.existingSecret .Values.postgresql.url -}}true{{- end -}}
{{- end -}}

{{/*
An env entry read from the Secret. A key the chart's own Secret does not hold is left out (so the setting keeps
its default); with an existing Secret the key is required when `required` is true, else optional.
Usage: include "finetune-platform.secretEnv" (dict "root" $ "name" "JWT_SECRET" "present" true "required" false)
*/}}
{{- define "finetune-platform.secretEnv" -}}
{{- $root := .root -}}
{{- if or $root.Values.secrets.existingSecret .present }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "finetune-platform.secretName" $root }}
      key: {{ .name }}
      {{- if $root.Values.secrets.existingSecret }}
      optional: {{ not .required }}
      {{- end }}
{{- end }}
{{- end -}}

{{/* In-cluster addresses of the chart's services. */}}
{{- define "finetune-platform.apiUrl" -}}
http://{{ include "finetune-platform.componentName" (list . "api") }}:8000
{{- end -}}
{{- define "finetune-platform.inferenceUrl" -}}
http://{{ include "finetune-platform.componentName" (list . "inference") }}:8080
{{- end -}}
{{- define "finetune-platform.mlflowUrl" -}}
http://{{ include "finetune-platform.componentName" (list . "mlflow") }}:5000
{{- end -}}
{{- /* The password is the container's REDIS_PASSWORD variable, which the kubelet substitutes. */}}
{{- define "finetune-platform.redisUrl" -}}
redis://:$(REDIS_PASSWORD)@{{ include "finetune-platform.componentName" (list . "redis") }}:6379/0
{{- end -}}

{{/*
The platform's environment, shared by api, workers, inference and the migration Job. Paths are on the shared
/data volume; HOME is /tmp because the root filesystem is read-only.
Usage: include "finetune-platform.env" (dict "root" $ "queue" .Values.workers.queueName)
*/}}
{{- define "finetune-platform.env" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
{{- $strict := ne $values.env.ENVIRONMENT "local" -}}
- name: ENVIRONMENT
  value: {{ $values.env.ENVIRONMENT | quote }}
- name: LOG_LEVEL
  value: {{ $values.env.LOG_LEVEL | quote }}
- name: HOME
  value: /tmp
- name: FINETUNE_HOME
  value: /data/home
- name: HF_HOME
  value: /data/home/huggingface
- name: RESULTS_DIR
  value: /data/results
- name: MODEL_REGISTRY_DIR
  value: /data/registry
{{- include "finetune-platform.secretEnv" (dict "root" $root "name" "REDIS_PASSWORD" "present" true "required" true) }}
- name: REDIS_URL
  value: {{ include "finetune-platform.redisUrl" $root | quote }}
- name: MLFLOW_TRACKING_URI
  value: {{ include "finetune-platform.mlflowUrl" $root | quote }}
{{- /* MLflow's client reads these two itself: the platform's account on the tracking server. */}}
- name: MLFLOW_TRACKING_USERNAME
  value: {{ include "finetune-platform.mlflowUsername" $root | quote }}
{{- include "finetune-platform.secretEnv" (dict "root" $root "name" "MLFLOW_TRACKING_PASSWORD" "present" true "required" true) }}
{{- with $values.env.MLFLOW_UI_URL }}
- name: MLFLOW_UI_URL
  value: {{ . | quote }}
{{- end }}
- name: QUEUE_NAME
  value: {{ .queue | quote }}
{{- if $values.workers.gpu.enabled }}
{{- /* Jobs asking for device: cuda are sent to the GPU pool's queue by whoever enqueues them. */}}
- name: GPU_QUEUE_NAME
  value: {{ $values.workers.gpu.queueName | quote }}
{{- /* A submit asking for more devices than one GPU worker has is refused (422). */}}
- name: GPU_POOL_MAX_DEVICES
  value: {{ $values.workers.gpu.gpusPerPod | quote }}
{{- end }}
- name: JWT_EXPIRE_MINUTES
  value: {{ $values.env.JWT_EXPIRE_MINUTES | quote }}
- name: METRICS_ENABLED
  value: "true"
- name: WORKER_METRICS_PORT
  value: "9100"
- name: SERVE_RUNTIME
  value: {{ $values.env.SERVE_RUNTIME | quote }}
- name: SERVE_MAX_ADAPTERS
  value: {{ $values.env.SERVE_MAX_ADAPTERS | quote }}
- name: SERVE_BATCH_WAIT_MS
  value: {{ $values.env.SERVE_BATCH_WAIT_MS | quote }}
{{- range $name, $value := $values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- include "finetune-platform.secretEnv" (dict "root" $root "name" "JWT_SECRET" "present" $values.secrets.jwtSecret "required" $strict) }}
{{- include "finetune-platform.secretEnv" (dict "root" $root "name" "DATABASE_URL" "present" $values.postgresql.url "required" $strict) }}
{{- include "finetune-platform.secretEnv" (dict "root" $root "name" "SERVE_API_KEYS" "present" $values.secrets.serveApiKeys "required" false) }}
{{- include "finetune-platform.secretEnv" (dict "root" $root "name" "METRICS_TOKEN" "present" true "required" true) }}
{{- end -}}

{{/*
FORWARDED_ALLOW_IPS of the containers that answer HTTP through the ingress (api, inference, ui): the proxies whose
X-Forwarded-For they trust. Usage: include "finetune-platform.forwardedEnv" $
*/}}
{{- define "finetune-platform.forwardedEnv" -}}
- name: FORWARDED_ALLOW_IPS
  value: {{ .Values.forwardedAllowIps | quote }}
{{- end -}}

{{/*
Pod-level fields every pod shares, and the component's scheduling.
Usage: include "finetune-platform.podDefaults" (list $ .Values.api)
*/}}
{{- define "finetune-platform.podDefaults" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
automountServiceAccountToken: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $component.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $component.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $component.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container security context. */}}
{{- define "finetune-platform.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* The /tmp emptyDir volume (the root filesystem is read-only). */}}
{{- define "finetune-platform.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* The shared /data volume. */}}
{{- define "finetune-platform.dataVolume" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "finetune-platform.dataClaimName" . }}
{{- end -}}

{{/* Probe timings. Usage: include "finetune-platform.probeTimings" $ */}}
{{- define "finetune-platform.probeTimings" -}}
periodSeconds: {{ .Values.probes.periodSeconds }}
timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
failureThreshold: {{ .Values.probes.failureThreshold }}
{{- end -}}

{{/*
Startup, liveness and readiness probes on one HTTP path. Usage:
include "finetune-platform.httpProbes" (dict "root" $ "path" "/health" "port" "http")
*/}}
{{- define "finetune-platform.httpProbes" -}}
startupProbe:
  httpGet:
    path: {{ .path }}
    port: {{ .port }}
  periodSeconds: {{ .root.Values.probes.periodSeconds }}
  timeoutSeconds: {{ .root.Values.probes.timeoutSeconds }}
  failureThreshold: {{ .root.Values.probes.startupFailureThreshold }}
livenessProbe:
  httpGet:
    path: {{ .path }}
    port: {{ .port }}
  {{- include "finetune-platform.probeTimings" .root | nindent 2 }}
readinessProbe:
  httpGet:
    path: {{ .path }}
    port: {{ .port }}
  {{- include "finetune-platform.probeTimings" .root | nindent 2 }}
{{- end -}}

{{/*
Pod annotations: the component's own, plus a checksum of the chart's Secret for pods that read it, so a changed
secret restarts them. Usage: include "finetune-platform.podAnnotations" (dict "root" $ "extra" .Values.api.podAnnotations "secret" true)
*/}}
{{- define "finetune-platform.podAnnotations" -}}
{{- $root := .root -}}
{{- $annotations := deepCopy (default (dict) .extra) -}}
{{- if and .secret (not $root.Values.secrets.existingSecret) -}}
{{- $_ := set $annotations "checksum/secret" (include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum) -}}
{{- end -}}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Reason a JWT secret is unsafe outside local mode, or nothing. */}}
{{- define "finetune-platform.jwtSecretProblem" -}}
{{- include "finetune-platform.secretProblem" (.Values.secrets.jwtSecret | toString) -}}
{{- end -}}

{{/* Reason a secret (a string) is unsafe outside local mode, or nothing. Usage: include "finetune-platform.secretProblem" $value */}}
{{- define "finetune-platform.secretProblem" -}}
{{- $secret := . -}}
{{- $lowered := lower $secret -}}
{{- $placeholder := false -}}
{{- range list "change" "placeholder" "example" "secret" "default" "your" "xxxx" "todo" "dummy" -}}
{{- if contains . $lowered -}}{{- $placeholder = true -}}{{- end -}}
{{- end -}}
{{- if eq $secret "" -}}
is empty
{{- else if $placeholder -}}
is a placeholder
{{- else if lt (len $secret) 32 -}}
is shorter than 32 characters
{{- else if lt (len (uniq (splitList "" $secret))) 8 -}}
repeats fewer than 8 distinct characters
{{- end -}}
{{- end -}}

{{/*
Refuses to render an install that would start but be unsafe or broken. Outside local mode the API rejects a weak
JWT secret at start; failing here says so before anything is deployed.
*/}}
{{- define "finetune-platform.validate" -}}
{{- $values := .Values -}}
{{- $environment := $values.env.ENVIRONMENT -}}
{{- if and (ne $environment "local") (not $values.secrets.existingSecret) -}}
{{- $problem := include "finetune-platform.jwtSecretProblem" . -}}
{{- if $problem -}}
{{- fail (printf "ENVIRONMENT=%s needs a real JWT secret: secrets.jwtSecret %s. Generate one with `openssl rand -hex 32` and pass --set secrets.jwtSecret=<value>, or set secrets.existingSecret to a Secret holding JWT_SECRET." $environment $problem) -}}
{{- end -}}
{{- if not $values.postgresql.url -}}
{{- fail (printf "ENVIRONMENT=%s needs PostgreSQL: set postgresql.url (postgresql+psycopg://user:password@host:5432/finetune), or set secrets.existingSecret to a Secret holding DATABASE_URL. SQLite on the shared volume is for local mode only." $environment) -}}
{{- end -}}
{{- if and $values.monitoring.enabled (not $values.monitoring.grafana.adminPassword) -}}
{{- fail (printf "ENVIRONMENT=%s with monitoring.enabled needs monitoring.grafana.adminPassword (or secrets.existingSecret holding GRAFANA_ADMIN_PASSWORD); Grafana's default admin/admin is for local mode only." $environment) -}}
{{- end -}}
{{- end -}}
{{- range $component := list "workers" "inference" -}}
{{- $autoscaling := (get $values $component).autoscaling -}}
{{- if and $autoscaling.enabled (gt (int $autoscaling.minReplicas) (int $autoscaling.maxReplicas)) -}}
{{- fail (printf "%s.autoscaling.minReplicas (%d) is above maxReplicas (%d)." $component (int $autoscaling.minReplicas) (int $autoscaling.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- if $values.ingress.enabled -}}
{{- range $values.ingress.hosts -}}
{{- range .paths -}}
{{- if and (has .service (list "ui" "inference")) (not (get $values .service).enabled) -}}
{{- fail (printf "ingress.hosts: a path routes to %s, but %s.enabled is false." .service .service) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if include "finetune-platform.auditEnabled" . -}}
{{- if and (ne $environment "local") $values.audit.anchorKey (not $values.audit.existingSecret) -}}
{{- $problem := include "finetune-platform.secretProblem" ($values.audit.anchorKey | toString) -}}
{{- if $problem -}}
{{- fail (printf "ENVIRONMENT=%s: audit.anchorKey %s; every checkpoint run would fail on it. Generate one with `openssl rand -hex 32`, leave it empty (generated), or set audit.existingSecret." $environment $problem) -}}
{{- end -}}
{{- end -}}
{{- if and $values.audit.existingSecret (eq $values.audit.existingSecret $values.secrets.existingSecret) -}}
{{- fail (printf "audit.existingSecret must be a Secret of its own, not secrets.existingSecret (%q): the anchor key goes to the audit Jobs only." $values.audit.existingSecret) -}}
{{- end -}}
{{- if and $values.audit.persistence.existingClaim (eq $values.audit.persistence.existingClaim (include "finetune-platform.dataClaimName" .)) -}}
{{- fail (printf "audit.persistence.existingClaim must not be the shared /data claim (%q): the api, workers and inference write there, and could rewrite the checkpoints." $values.audit.persistence.existingClaim) -}}
{{- end -}}
{{- end -}}
{{- if and $values.workers.gpu.enabled (eq $values.workers.gpu.queueName $values.workers.queueName) -}}
{{- fail (printf "workers.gpu.queueName must differ from workers.queueName (both %q): GPU jobs would run on CPU workers." $values.workers.queueName) -}}
{{- end -}}
{{- end -}}
