{{- define "outbox-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "outbox-relay.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "outbox-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "outbox-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object the chart renders (commonLabels never enter a selector). */}}
{{- define "outbox-relay.labels" -}}
{{ include "outbox-relay.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A digest pins the image exactly, so it wins over the tag. */}}
{{- define "outbox-relay.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The port the relay listens on: the number after the last colon of config.http.listen, so
"0.0.0.0:9464" and "[::]:9464" both give 9464. It is the single source of the container port,
the probes, the Service, the monitors, the NetworkPolicy and the helm test. A loopback address
is refused: the kubelet's probes and Prometheus reach the pod's own IP.
*/}}
{{- define "outbox-relay.httpPort" -}}
{{- $listen := .Values.config.http.listen | toString -}}
{{- $port := $listen | splitList ":" | last -}}
{{- if not (regexMatch "^[0-9]{1,5}$" $port) -}}
{{- fail (printf "config.http.listen %q must end in :PORT" $listen) -}}
{{- end -}}
{{- if regexMatch "^(127\\.|localhost:|\\[::1\\]:)" $listen -}}
{{- fail (printf "config.http.listen %q is a loopback address: probes and Prometheus could not reach it; listen on 0.0.0.0 or [::]" $listen) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{/*
The Service's port. service.port 0 (the default) means the relay's own port; any other value
must equal it. One number everywhere avoids the old trap of setting service.port and expecting
the relay to listen there: it listens on config.http.listen only.
*/}}
{{- define "outbox-relay.servicePort" -}}
{{- $port := include "outbox-relay.httpPort" . | int -}}
{{- $svc := .Values.service.port | int -}}
{{- if and $svc (ne $svc $port) -}}
{{- fail (printf "service.port %d differs from the port of config.http.listen (%s): the relay listens only on config.http.listen, so change that (service.port 0 follows it)" $svc .Values.config.http.listen) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{- define "outbox-relay.secretName" -}}
{{- default (include "outbox-relay.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{- define "outbox-relay.hasSecret" -}}
{{- if or .Values.secret.existingSecret .Values.secret.env }}true{{ end -}}
{{- end -}}

{{/* The chart renders a Secret of its own only from secret.env, never over existingSecret. */}}
{{- define "outbox-relay.createsSecret" -}}
{{- if and (not .Values.secret.existingSecret) .Values.secret.env }}true{{ end -}}
{{- end -}}

{{- define "outbox-relay.configMapName" -}}
{{- default (include "outbox-relay.fullname" .) .Values.existingConfigMap -}}
{{- end -}}

{{- define "outbox-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "outbox-relay.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The relay's config.toml, from .Values.config. A URL whose file form (url_file) is set is left
out: the relay refuses a value and its file form together, and values.yaml has a default URL.
*/}}
{{- define "outbox-relay.configToml" -}}
{{- $config := deepCopy .Values.config -}}
{{- if and (gt (int ($config.relay.partitions | default 1)) 1) (eq $config.broker.kind "kafka") (eq $config.broker.kafka.delivery "exactly_once") -}}
{{- fail "config.relay.partitions must be 1 with config.broker.kafka.delivery exactly_once: exactly-once replicas fail over instead of sharing partitions" -}}
{{- end -}}
{{- if $config.database.url_file }}{{ $_ := unset $config.database "url" }}{{ end -}}
{{- if $config.broker.amqp.url_file }}{{ $_ := unset $config.broker.amqp "url" }}{{ end -}}
{{- if $config.broker.redis.url_file }}{{ $_ := unset $config.broker.redis "url" }}{{ end -}}
{{ toToml $config }}
{{- end -}}

{{/*
An env entry setting the database URL from a key of a Secret the user names, as operators
such as CloudNativePG provide (<cluster>-app, key uri). Kubernetes gives `env` precedence over
`envFrom`, so it wins over any OUTBOX_RELAY__DATABASE__URL in the Secrets loaded with envFrom.
Argument: a {name, key} dict and the values path for error messages.
*/}}
{{- define "outbox-relay.urlEnv" -}}
{{- $ref := .ref -}}
- name: OUTBOX_RELAY__DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ required (printf "%s.key: the key of %s that holds the URL (e.g. uri)" .path $ref.name) $ref.key }}
{{- end -}}

{{/*
The relay container. An application chart that runs the relay as a sidecar includes it:
  initContainers:
    - {{- include "outbox-relay.container" (dict "root" . "sidecar" true) | nindent 6 }}
and adds the config volume ("outbox-relay.volumes") to its pod. With sidecar=true the
container is a native sidecar (restartPolicy: Always) and its readiness follows
sidecarReadinessProbe (/livez), so a broker outage never makes the application pod unready.
The port is named outbox-http, not http, so it cannot clash with the application's own.
*/}}
{{- define "outbox-relay.container" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
name: outbox-relay
image: {{ include "outbox-relay.image" $root }}
imagePullPolicy: {{ $v.image.pullPolicy }}
{{- if .sidecar }}
restartPolicy: Always
{{- end }}
args: ["run", "--config", "/etc/outbox-relay/config.toml"]
{{- if or $v.extraEnv $v.secret.urlSecretRef.name }}
env:
  {{- with $v.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- if $v.secret.urlSecretRef.name }}
  {{- include "outbox-relay.urlEnv" (dict "ref" $v.secret.urlSecretRef "path" "secret.urlSecretRef") | nindent 2 }}
  {{- end }}
{{- end }}
{{- if or (include "outbox-relay.hasSecret" $root) $v.extraEnvFrom }}
envFrom:
  {{- if include "outbox-relay.hasSecret" $root }}
  - secretRef:
      name: {{ include "outbox-relay.secretName" $root }}
  {{- end }}
  {{- with $v.extraEnvFrom }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
ports:
  - name: outbox-http
    containerPort: {{ include "outbox-relay.httpPort" $root }}
    protocol: TCP
{{- with $v.startupProbe }}
startupProbe:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.livenessProbe }}
livenessProbe:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (ternary $v.sidecarReadinessProbe $v.readinessProbe (eq .sidecar true)) }}
readinessProbe:
  {{- toYaml . | nindent 2 }}
{{- end }}
resources:
  {{- toYaml $v.resources | nindent 2 }}
securityContext:
  {{- toYaml $v.securityContext | nindent 2 }}
volumeMounts:
  - name: outbox-relay-config
    mountPath: /etc/outbox-relay
    readOnly: true
  {{- with $v.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The volumes the relay container mounts: its config.toml, and extraVolumes (CA files). */}}
{{- define "outbox-relay.volumes" -}}
- name: outbox-relay-config
  configMap:
    name: {{ include "outbox-relay.configMapName" . }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Annotations that roll the pods when config or secret change. */}}
{{- define "outbox-relay.checksums" -}}
checksum/config: {{ (.Values.existingConfigMap | default (include "outbox-relay.configToml" .)) | sha256sum }}
checksum/secret: {{ toJson .Values.secret | sha256sum }}
{{- end -}}

{{/* The PodMonitor's matchLabels: podMonitor.selector, else the relay's own pods. */}}
{{- define "outbox-relay.podMonitorSelector" -}}
{{- if .Values.podMonitor.selector -}}
{{- toYaml .Values.podMonitor.selector -}}
{{- else if .Values.deployment.enabled -}}
{{- include "outbox-relay.selectorLabels" . -}}
{{- else -}}
{{- fail "podMonitor.selector: in sidecar mode, give the matchLabels of your application's pods" -}}
{{- end -}}
{{- end -}}

{{/*
The relabeling both monitors apply: every series, `up` included, carries
outbox_relay=<fullname> whether it was scraped through the Service or from the pods, so the
rules and the dashboard select one install the same way in both modes.
*/}}
{{- define "outbox-relay.monitorRelabelings" -}}
- action: replace
  targetLabel: outbox_relay
  replacement: {{ include "outbox-relay.fullname" . }}
{{- end -}}
