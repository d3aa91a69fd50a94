{{/* Chart name, overridable. */}}
{{- define "gomemtrace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; objects are "<fullname>-agent" (gomemtrace-agent for a
release named gomemtrace, as in deploy/kubernetes/). */}}
{{- define "gomemtrace.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gomemtrace.agentName" -}}
{{- printf "%s-agent" (include "gomemtrace.fullname" .) }}
{{- end }}

{{- define "gomemtrace.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gomemtrace.agentName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gomemtrace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gomemtrace.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "gomemtrace.labels" -}}
{{ include "gomemtrace.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The agent's command-line flags, one per list item (contract: docs/DEPLOY.md). */}}
{{- define "gomemtrace.args" -}}
{{- $a := .Values.agent -}}
- --listen=0.0.0.0:{{ $a.port }}
- --mode={{ $a.mode }}
- --kubernetes={{ $a.kubernetes }}
- --max-processes={{ $a.maxProcesses }}
{{- range $a.includeExe }}
- {{ printf "--include-exe=%s" . | quote }}
{{- end }}
{{- range $a.excludeExe }}
- {{ printf "--exclude-exe=%s" . | quote }}
{{- end }}
{{- range $a.includeNamespace }}
- --include-namespace={{ . }}
{{- end }}
{{- range $a.excludeNamespace }}
- --exclude-namespace={{ . }}
{{- end }}
{{- with $a.podSelector }}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
- {{ printf "--pod-selector=%s" (join "," $pairs) | quote }}
{{- end }}
{{- with $a.pyroscopeUrl }}
- {{ printf "--pyroscope-url=%s" . | quote }}
{{- end }}
{{- range $a.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
