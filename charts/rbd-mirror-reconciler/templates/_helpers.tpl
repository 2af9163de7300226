{{/* Names and labels, the usual way. */}}
{{- define "rbd-mirror-reconciler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rbd-mirror-reconciler.fullname" -}}
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

{{- define "rbd-mirror-reconciler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rbd-mirror-reconciler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rbd-mirror-reconciler.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "rbd-mirror-reconciler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rbd-mirror-reconciler
{{- end }}

{{- define "rbd-mirror-reconciler.serviceAccountName" -}}
{{- default (include "rbd-mirror-reconciler.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "rbd-mirror-reconciler.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The `run` flags for ceph-csi's files; fails on a layout `run` cannot serve. */}}
{{- define "rbd-mirror-reconciler.csiConfigArgs" -}}
{{- $c := .Values.csiConfig }}
{{- if eq $c.layout "helm" "rook" }}
- --csi-config-layout={{ $c.layout }}
{{- else if eq $c.layout "ceph-csi-operator" }}
{{- if $c.manage }}
{{- fail "csiConfig.manage must be false with csiConfig.layout=ceph-csi-operator: the operator rewrites cluster-mapping.json from its ClientProfileMappings" }}
{{- end }}
{{- $_ := required "csiConfig.configMap: the ConfigMap ceph-csi-operator renders config.json into" $c.configMap }}
{{- $_ := required "csiConfig.key: config.json's key in it" $c.key }}
- --csi-config-layout=helm
{{- else }}
{{- fail (printf "csiConfig.layout must be helm, rook or ceph-csi-operator, not %q" $c.layout) }}
{{- end }}
{{- with $c.configMap }}
- --csi-config-name={{ . }}
{{- end }}
{{- with $c.key }}
- --csi-config-key={{ . }}
{{- end }}
{{- with $c.clusterMapping.configMap }}
- --cluster-mapping-configmap={{ . }}
{{- end }}
{{- with $c.clusterMapping.namespace }}
- --cluster-mapping-namespace={{ . }}
{{- end }}
{{- with $c.clusterMapping.key }}
- --cluster-mapping-key={{ . }}
{{- end }}
{{- if $c.manage }}
- --manage-csi-config
{{- end }}
{{- end }}
