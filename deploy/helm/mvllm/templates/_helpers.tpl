{{/* The name every object carries. */}}
{{- define "mvllm.name" -}}
{{- default .Release.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the router's pods (the release's own: two releases never share pods). */}}
{{- define "mvllm.selectorLabels" -}}
app.kubernetes.io/name: mvllm
app.kubernetes.io/component: router
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "mvllm.labels" -}}
{{ include "mvllm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
