{{- define "outbox-relay.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "outbox-relay.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "outbox-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "outbox-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "outbox-relay.labels" -}}
{{ include "outbox-relay.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "outbox-relay.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "outbox-relay.secretName" -}}
{{- default (include "outbox-relay.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{- define "outbox-relay.hasSecret" -}}
{{- if or .Values.secret.existingSecret .Values.secret.env }}true{{ end -}}
{{- end -}}

{{- define "outbox-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "outbox-relay.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The relay's config.toml, from .Values.config. */}}
{{- define "outbox-relay.configToml" -}}
{{ toToml .Values.config }}
{{- end -}}

{{/*
The relay container. An application chart that runs the relay as a sidecar includes it:
  initContainers:
    - {{- include "outbox-relay.container" (dict "root" . "sidecar" true) | nindent 6 }}
and adds the config volume ("outbox-relay.volumes") to its pod. With sidecar=true the
container is a native sidecar (restartPolicy: Always) and its readiness follows /livez, so a
broker outage never makes the application pod unready.
*/}}
{{- define "outbox-relay.container" -}}
{{- $root := .root -}}
name: outbox-relay
image: {{ include "outbox-relay.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
{{- if .sidecar }}
restartPolicy: Always
{{- end }}
args: ["run", "--config", "/etc/outbox-relay/config.toml"]
{{- if or (include "outbox-relay.hasSecret" $root) $root.Values.extraEnv }}
{{- with $root.Values.extraEnv }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if include "outbox-relay.hasSecret" $root }}
envFrom:
  - secretRef:
      name: {{ include "outbox-relay.secretName" $root }}
{{- end }}
{{- end }}
ports:
  - name: http
    containerPort: {{ $root.Values.service.port }}
    protocol: TCP
livenessProbe:
  httpGet:
    path: /livez
    port: http
  periodSeconds: 10
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: {{ if .sidecar }}/livez{{ else }}/readyz{{ end }}
    port: http
  periodSeconds: 5
  failureThreshold: 3
resources:
  {{- toYaml $root.Values.resources | nindent 2 }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
volumeMounts:
  - name: outbox-relay-config
    mountPath: /etc/outbox-relay
    readOnly: true
  {{- with $root.Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The volumes the relay container mounts: its config.toml, and extraVolumes (CA files). */}}
{{- define "outbox-relay.volumes" -}}
- name: outbox-relay-config
  configMap:
    name: {{ include "outbox-relay.fullname" . }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Annotations that roll the pods when config or secret change. */}}
{{- define "outbox-relay.checksums" -}}
checksum/config: {{ include "outbox-relay.configToml" . | sha256sum }}
checksum/secret: {{ toJson .Values.secret | sha256sum }}
{{- end -}}
