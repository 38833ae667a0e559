{{/* Labels of every object: the kustomize base's, plus Helm's own. */}}
{{- define "limpet.labels" -}}
app.kubernetes.io/name: limpet
app.kubernetes.io/part-of: limpet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The operator pods' selector: the same as the kustomize base's, so either can take over. */}}
{{- define "limpet.selector" -}}
app.kubernetes.io/name: limpet
app.kubernetes.io/component: operator
{{- end }}

{{- define "limpet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The RBAC rules of deploy/rbac/operator-rbac.yaml (the drift test compares them). */}}
{{- define "limpet.rules" -}}
- apiGroups: [limpet.dev]
  resources: [stickyservices]
  verbs: [get, list, watch, patch]
- apiGroups: [limpet.dev]
  resources: [stickyservices/status]
  verbs: [patch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
