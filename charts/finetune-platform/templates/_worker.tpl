{{/*
A training-worker Deployment, shared by the CPU pool and the GPU pool: each pool consumes its own Celery queue.
Usage: include "finetune-platform.workerDeployment" (dict "root" $ "pool" "cpu" "values" .Values.workers
  "queue" .Values.workers.queueName "resources" .Values.workers.resources "replicas" 1 "autoscaled" false)
*/}}
{{- define "finetune-platform.workerDeployment" -}}
{{- $root := .root -}}
{{- $name := ternary "worker" "worker-gpu" (eq .pool "cpu") -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "finetune-platform.componentName" (list $root $name) }}
  labels:
    {{- include "finetune-platform.componentLabels" (list $root "worker") | nindent 4 }}
    finetune-platform/pool: {{ .pool }}
spec:
  {{- if not .autoscaled }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "finetune-platform.selectorLabels" (list $root "worker") | nindent 6 }}
      finetune-platform/pool: {{ .pool }}
  template:
    metadata:
      labels:
        {{- include "finetune-platform.componentLabels" (list $root "worker") | nindent 8 }}
        finetune-platform/pool: {{ .pool }}
      {{- with include "finetune-platform.podAnnotations" (dict "root" $root "extra" $root.Values.workers.podAnnotations "secret" true) | trim }}
      {{- . | nindent 6 }}
      {{- end }}
    spec:
      {{- include "finetune-platform.podDefaults" (list $root .values) | nindent 6 }}
      # SIGTERM makes a worker checkpoint its job and hand it back to the queue: give it time to.
      terminationGracePeriodSeconds: {{ $root.Values.workers.terminationGracePeriodSeconds }}
      containers:
        - name: worker
          image: {{ include "finetune-platform.image" (list $root .values.image) | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["finetune", "worker", "--metrics-port", "9100", "--metrics-host", "0.0.0.0"]
          ports:
            - name: metrics
              containerPort: 9100
          env:
            {{- include "finetune-platform.env" (dict "root" $root "queue" .queue) | nindent 12 }}
          {{- include "finetune-platform.httpProbes" (dict "root" $root "path" "/metrics" "port" "metrics") | nindent 10 }}
          resources:
            {{- toYaml .resources | nindent 12 }}
          {{- include "finetune-platform.containerSecurityContext" $root | nindent 10 }}
          volumeMounts:
            - name: data
              mountPath: /data
            - name: tmp
              mountPath: /tmp
            - name: dshm
              mountPath: /dev/shm
      volumes:
        {{- include "finetune-platform.dataVolume" $root | nindent 8 }}
        {{- include "finetune-platform.tmpVolume" $root | nindent 8 }}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $root.Values.workers.shmSizeLimit }}
{{- end -}}
