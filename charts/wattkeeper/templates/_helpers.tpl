{{/* Names, labels and the small decisions every template shares. */}}

{{- define "wattkeeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wattkeeper.fullname" -}}
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

{{- define "wattkeeper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wattkeeper.commonLabels" -}}
helm.sh/chart: {{ include "wattkeeper.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wattkeeper
{{- end }}

{{- define "wattkeeper.labels" -}}
{{ include "wattkeeper.commonLabels" . }}
{{ include "wattkeeper.selectorLabels" . }}
{{- end }}

{{- define "wattkeeper.exporterLabels" -}}
{{ include "wattkeeper.commonLabels" . }}
{{ include "wattkeeper.exporterSelectorLabels" . }}
{{- end }}

{{- define "wattkeeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wattkeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "wattkeeper.exporterSelectorLabels" -}}
app.kubernetes.io/name: {{ include "wattkeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nvml-exporter
{{- end }}

{{- define "wattkeeper.agentLabels" -}}
{{ include "wattkeeper.commonLabels" . }}
{{ include "wattkeeper.agentSelectorLabels" . }}
{{- end }}

{{- define "wattkeeper.agentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "wattkeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: power-agent
{{- end }}

{{- define "wattkeeper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wattkeeper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wattkeeper.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end }}

{{- define "wattkeeper.peeringName" -}}
{{- default (include "wattkeeper.fullname" .) .Values.peering.name }}
{{- end }}

{{- define "wattkeeper.replicas" -}}
{{- if .Values.peering.enabled }}{{ .Values.replicaCount }}{{ else }}1{{ end }}
{{- end }}

{{/* The operator's namespaced rules: in a ClusterRole (all namespaces) or in a Role per watched namespace. */}}
{{- define "wattkeeper.namespacedRules" -}}
# Watch the custom resources (kopf: list + watch); re-read one under the reconcile lock (get); kopf keeps its
# bookkeeping in wattkeeper.io/* annotations (patch). The operator never writes their spec.
- apiGroups: [wattkeeper.io]
  resources: [llmservices, energybudgets]
  verbs: [get, list, watch, patch]
# Decisions, plans and energy accounting live in status; a profile's status says how many points it accepted.
- apiGroups: [wattkeeper.io]
  resources: [llmservices/status, energybudgets/status, energyprofiles/status]
  verbs: [patch]
# The planner reads measured profile points; kopf watches profiles to check them (patch: its annotations).
- apiGroups: [wattkeeper.io]
  resources: [energyprofiles]
  verbs: [list, watch, patch]
# The vLLM Deployment and Service of each LLMService: read the rollout state, server-side apply
# (an apply that creates an object is authorized as create). Owner references clean up the service's own objects;
# delete (Deployments only): a canary (`<name>-canary`, one replica of an untried configuration) is removed when
# it ends, while its service lives on.
# list + watch: the control loop lists them once per pass, and changes by hand or by another tool (watched)
# go back to the plan within seconds.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
# An EnergyProfile's spec.sweep: the profiler Job that measures it (create only: a Job is never changed; owner
# references delete it with its profile, ttlSecondsAfterFinished before that).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create]
# Reasons for each reconfiguration, shown by `kubectl describe` (the operator's and kopf's warnings).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.agent.enabled }}
# agent.enabled (--power-limits): list the service's running pods and patch the annotation
# wattkeeper.io/gpu-power-limit-watts onto them (a metadata patch restarts nothing; the node agent applies it).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, patch]
{{- else if eq .Values.operator.telemetry "scrape" }}
# --telemetry scrape: find the Running vLLM pods to read their /metrics, and the GPU exporters on their nodes
# (vLLM exports no power).
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
{{- end }}
{{- end }}
