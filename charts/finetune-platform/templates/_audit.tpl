{{/*
The audit log's anchors: names, and the CronJob both audit commands run in. Only these Jobs get the anchor key and
the anchors' volume; no other workload of the chart mounts either.
*/}}

{{/* "true" when either audit CronJob is rendered (then so are the key's Secret and the anchors' claim). */}}
{{- define "finetune-platform.auditEnabled" -}}
{{- if or .Values.audit.checkpoint.enabled .Values.audit.verify.enabled -}}true{{- end -}}
{{- end -}}

{{/* Name of the Secret holding the anchor key: audit.existingSecret, else the chart's own "<fullname>-audit". */}}
{{- define "finetune-platform.auditSecretName" -}}
{{- default (include "finetune-platform.componentName" (list . "audit")) .Values.audit.existingSecret -}}
{{- end -}}

{{/* Key of the anchor key in that Secret. */}}
{{- define "finetune-platform.auditSecretKey" -}}
{{- ternary .Values.audit.existingSecretKey "AUDIT_ANCHOR_KEY" (not (empty .Values.audit.existingSecret)) -}}
{{- end -}}

{{/* Name of the anchors' claim: audit.persistence.existingClaim, else the chart's own "<fullname>-audit-anchors". */}}
{{- define "finetune-platform.auditClaimName" -}}
{{- default (include "finetune-platform.componentName" (list . "audit-anchors")) .Values.audit.persistence.existingClaim -}}
{{- end -}}

{{/*
A CronJob running one `finetune audit` command from the API image (it has the CLI and the database drivers), one
run at a time. The anchors' volume is mounted at /anchors, read-only for verify. The database is the pods' one:
the Secret's DATABASE_URL (finetune_app's), or in local mode the SQLite file on the shared volume, which is then
mounted too. FINETUNE_HOME is scratch space on /tmp.
Usage: include "finetune-platform.auditCronJob" (dict "root" $ "component" "audit-verify" "command" "verify"
  "schedule" .Values.audit.verify.schedule "readOnly" true)
*/}}
{{- define "finetune-platform.auditCronJob" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
{{- $external := include "finetune-platform.externalDatabase" $root -}}
apiVersion: batch/v1
kind: CronJob
metadata:
  name: {{ include "finetune-platform.componentName" (list $root .component) }}
  labels:
    {{- include "finetune-platform.componentLabels" (list $root .component) | nindent 4 }}
spec:
  schedule: {{ .schedule | quote }}
  concurrencyPolicy: Forbid
  # A run missed by more than this is skipped; the next one covers the same entries.
  startingDeadlineSeconds: 300
  successfulJobsHistoryLimit: 1
  # Failed Jobs stay with their logs: they name the altered entry or the forged checkpoint.
  failedJobsHistoryLimit: 3
  jobTemplate:
    metadata:
      labels:
        {{- include "finetune-platform.componentLabels" (list $root .component) | nindent 8 }}
    spec:
      backoffLimit: {{ $values.audit.backoffLimit }}
      activeDeadlineSeconds: {{ $values.audit.activeDeadlineSeconds }}
      template:
        metadata:
          labels:
            {{- include "finetune-platform.componentLabels" (list $root .component) | nindent 12 }}
          {{- with $values.audit.podAnnotations }}
          annotations:
            {{- toYaml . | nindent 12 }}
          {{- end }}
        spec:
          {{- include "finetune-platform.podDefaults" (list $root $values.audit) | nindent 10 }}
          restartPolicy: Never
          containers:
            - name: {{ .component }}
              image: {{ include "finetune-platform.image" (list $root $values.api.image) | quote }}
              imagePullPolicy: {{ $values.image.pullPolicy }}
              command: ["finetune", "audit", {{ .command | quote }}]
              env:
                - name: ENVIRONMENT
                  value: {{ $values.env.ENVIRONMENT | quote }}
                - name: LOG_LEVEL
                  value: {{ $values.env.LOG_LEVEL | quote }}
                - name: HOME
                  value: /tmp
                - name: FINETUNE_HOME
                  value: /tmp/finetune
                {{- range $name, $value := $values.extraEnv }}
                - name: {{ $name }}
                  value: {{ $value | quote }}
                {{- end }}
                {{- if $external }}
                # finetune_app's URL, as the api pods connect: it reads the log and can change none of it.
                - name: DATABASE_URL
                  valueFrom:
                    secretKeyRef:
                      name: {{ include "finetune-platform.secretName" $root }}
                      key: DATABASE_URL
                {{- else }}
                # Local mode: the api's SQLite file (its FINETUNE_HOME is /data/home).
                - name: DATABASE_URL
                  value: sqlite:////data/home/finetune.db
                {{- end }}
                - name: AUDIT_ANCHOR_FILE
                  value: /anchors/audit-anchors.jsonl
                - name: AUDIT_ANCHOR_KEY
                  valueFrom:
                    secretKeyRef:
                      name: {{ include "finetune-platform.auditSecretName" $root }}
                      key: {{ include "finetune-platform.auditSecretKey" $root }}
              resources:
                {{- toYaml $values.audit.resources | nindent 16 }}
              {{- include "finetune-platform.containerSecurityContext" $root | nindent 14 }}
              volumeMounts:
                - name: anchors
                  mountPath: /anchors
                  {{- if .readOnly }}
                  readOnly: true
                  {{- end }}
                {{- if not $external }}
                - name: data
                  mountPath: /data
                {{- end }}
                - name: tmp
                  mountPath: /tmp
          volumes:
            - name: anchors
              persistentVolumeClaim:
                claimName: {{ include "finetune-platform.auditClaimName" $root }}
                {{- if .readOnly }}
                readOnly: true
                {{- end }}
            {{- if not $external }}
            {{- include "finetune-platform.dataVolume" $root | nindent 12 }}
            {{- end }}
            {{- include "finetune-platform.tmpVolume" $root | nindent 12 }}
{{- end -}}
