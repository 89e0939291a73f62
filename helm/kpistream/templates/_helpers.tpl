{{/* Shared template helpers: names, labels, the NATS URL, the pod security and probe blocks, sanity checks. */}}

{{- define "kpistream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kpistream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of one component's resources: <fullname>-<component>. */}}
{{- define "kpistream.component" -}}
{{- printf "%s-%s" (include "kpistream.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kpistream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kpistream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kpistream
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; call with (dict "root" $ "component" "gateway"). */}}
{{- define "kpistream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kpistream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kpistream.componentLabels" -}}
{{ include "kpistream.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kpistream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "kpistream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kpistream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kpistream.secretName" -}}
{{- default (include "kpistream.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{/* The NATS URL: the subchart's client Service, or nats.external.url. */}}
{{- define "kpistream.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- $name := "" }}
{{- if .Values.nats.fullnameOverride }}
{{- $name = .Values.nats.fullnameOverride }}
{{- else if contains "nats" .Release.Name }}
{{- $name = .Release.Name }}
{{- else }}
{{- $name = printf "%s-nats" .Release.Name }}
{{- end }}
{{- printf "nats://%s:4222" ($name | trunc 63 | trimSuffix "-") }}
{{- else }}
{{- required "nats.external.url is required when nats.enabled=false" .Values.nats.external.url }}
{{- end }}
{{- end }}

{{/* HTTP probes on a named port: startup and liveness on /healthz, readiness on /readyz. */}}
{{- define "kpistream.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 5
  failureThreshold: {{ .root.Values.probes.startupFailureThreshold }}
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: {{ .root.Values.probes.livenessPeriodSeconds }}
  timeoutSeconds: 3
  failureThreshold: {{ .root.Values.probes.livenessFailureThreshold }}
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  periodSeconds: {{ .root.Values.probes.readinessPeriodSeconds }}
  timeoutSeconds: 3
  failureThreshold: {{ .root.Values.probes.readinessFailureThreshold }}
{{- end }}

{{/* Environment every service shares: the ConfigMap, the downward API, and /tmp. */}}
{{- define "kpistream.commonEnvFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "kpistream.fullname" . }}
{{- end }}

{{/* Default affinity: prefer spreading a component's pods over nodes. */}}
{{- define "kpistream.affinity" -}}
{{- if .values.affinity }}
{{- toYaml .values.affinity }}
{{- else }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "kpistream.selectorLabels" (dict "root" .root "component" .component) | nindent 12 }}
{{- end }}
{{- end }}

{{/* Checks that stop a broken install at render time. */}}
{{- define "kpistream.validate" -}}
{{- if gt (int .Values.aggregator.replicas) (int .Values.partitions) }}
{{- fail (printf "aggregator.replicas (%d) must not exceed partitions (%d): a replica would own nothing" (int .Values.aggregator.replicas) (int .Values.partitions)) }}
{{- end }}
{{- if or (lt (int .Values.streamReplicas) 1) (gt (int .Values.streamReplicas) 5) }}
{{- fail "streamReplicas must be 1 to 5 (JetStream's limit)" }}
{{- end }}
{{- if le (int .Values.gateway.terminationGracePeriodSeconds) (add (int .Values.gateway.drainSecs) (int .Values.gateway.preStopSleepSeconds)) }}
{{- fail "gateway.terminationGracePeriodSeconds must exceed gateway.preStopSleepSeconds + gateway.drainSecs" }}
{{- end }}
{{- if le (int .Values.ingest.terminationGracePeriodSeconds) (int .Values.ingest.drainSecs) }}
{{- fail "ingest.terminationGracePeriodSeconds must exceed ingest.drainSecs" }}
{{- end }}
{{- if le (int .Values.aggregator.terminationGracePeriodSeconds) (int .Values.aggregator.drainSecs) }}
{{- fail "aggregator.terminationGracePeriodSeconds must exceed aggregator.drainSecs" }}
{{- end }}
{{- end }}
