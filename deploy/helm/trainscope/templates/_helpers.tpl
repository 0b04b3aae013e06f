{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "trainscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "trainscope.fullname" -}}
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

{{- define "trainscope.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "trainscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trainscope.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "trainscope.labels" -}}
helm.sh/chart: {{ include "trainscope.chart" .ctx }}
{{ include "trainscope.selectorLabels" . }}
app.kubernetes.io/part-of: trainscope
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{- define "trainscope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trainscope.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "trainscope.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "trainscope.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "trainscope.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret and key that hold the database URL: the bundled PostgreSQL's, or database.existingSecret. */}}
{{- define "trainscope.databaseSecret" -}}
{{- if .Values.postgresql.enabled }}
{{- include "trainscope.postgresql.fullname" . }}
{{- else }}
{{- required "database.existingSecret: name a Secret holding the PostgreSQL URL (or set postgresql.enabled=true to evaluate with a bundled PostgreSQL)" .Values.database.existingSecret }}
{{- end }}
{{- end }}

{{- define "trainscope.databaseKey" -}}
{{- if .Values.postgresql.enabled }}url{{ else }}{{ .Values.database.urlKey }}{{ end }}
{{- end }}

{{- define "trainscope.databaseEnv" -}}
- name: TRAINSCOPE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "trainscope.databaseSecret" . }}
      key: {{ include "trainscope.databaseKey" . }}
{{- end }}

{{/*
The operator's permissions, the same for the ClusterRole and for each namespace's Role. Derived from the code
(tests/test_helm.py checks the list against it): kopf lists/watches Workloads and patches them (finalizer,
progress annotations) and their status subresource, and posts Events (create only); operator/kube.py gets the
Secrets a Workload names, lists pods and gets pod logs.
*/}}
{{- define "trainscope.rbacRules" -}}
- apiGroups: [trainscope.io]
  resources: [workloads]
  verbs: [list, watch, patch]
- apiGroups: [trainscope.io]
  resources: [workloads/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
{{- if .Values.rbac.followJobs }}
# spec.jobRef and discovery: one `list` per kind and interval (never watch, never a per-job get).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list]
- apiGroups: [kubeflow.org]
  resources: [pytorchjobs, mpijobs]
  verbs: [list]
- apiGroups: [trainer.kubeflow.org]
  resources: [trainjobs]
  verbs: [list]
- apiGroups: [jobset.x-k8s.io]
  resources: [jobsets]
  verbs: [list]
- apiGroups: [ray.io]
  resources: [rayjobs]
  verbs: [list]
{{- end }}
{{- if .Values.operator.discoverJobs }}
# Discovery: Workloads made for annotated jobs (created, updated, deleted when the annotation goes) and the
# ConfigMaps named by trainscope.io/template.
- apiGroups: [trainscope.io]
  resources: [workloads]
  verbs: [create, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
{{- end }}
{{- if .Values.rbac.readSecrets }}
# Only `get`: the operator reads the Secrets a Workload names, and cannot enumerate or watch Secrets.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
  {{- with .Values.rbac.secretNames }}
  resourceNames:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Cross-field checks that a JSON schema cannot phrase clearly. */}}
{{- define "trainscope.validate" -}}
{{- if eq (int .Values.metrics.port) (int .Values.liveness.port) }}
{{- fail (printf "metrics.port and liveness.port must differ (both are %v)" .Values.metrics.port) }}
{{- end }}
{{- if and .Values.grafanaDashboard.enabled (not .Values.grafanaDashboard.labelKey) }}
{{- fail "grafanaDashboard.labelKey: the Grafana sidecar finds dashboards by a label; set one" }}
{{- end }}
{{- end }}

{{/* The Secret holding the API's bearer token: api.auth.existingSecret, or the one the chart creates. */}}
{{- define "trainscope.apiTokenSecret" -}}
{{- .Values.api.auth.existingSecret | default (printf "%s-api-token" (include "trainscope.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}
