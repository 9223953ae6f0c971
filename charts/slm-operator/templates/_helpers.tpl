{{/* Chart name (nameOverride or the chart's name), at most 63 characters. */}}
{{- define "slm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "slm-operator.fullname" -}}
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

{{/* <fullname>-<suffix>, at most 63 characters. */}}
{{- define "slm-operator.componentName" -}}
{{- printf "%s-%s" (include "slm-operator.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix }}
{{- end }}

{{- define "slm-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "slm-operator.labels" -}}
helm.sh/chart: {{ include "slm-operator.chart" . }}
app.kubernetes.io/name: {{ include "slm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: slm-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of a component: include "slm-operator.selectorLabels" (dict "root" $ "component" "operator") */}}
{{- define "slm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slm-operator.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of a component's objects. */}}
{{- define "slm-operator.componentLabels" -}}
{{ include "slm-operator.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* repository:tag or repository@digest. .image (the agent's) may leave fields empty to inherit from .Values.image;
it inherits the digest only when it sets neither repository nor tag. */}}
{{- define "slm-operator.imageRef" -}}
{{- $base := .root.Values.image -}}
{{- $img := default dict .image -}}
{{- $repo := default $base.repository $img.repository -}}
{{- $tag := default (default .root.Chart.AppVersion $base.tag) $img.tag -}}
{{- $digest := $img.digest -}}
{{- if and (not $digest) (not $img.tag) (not $img.repository) -}}
{{- $digest = $base.digest -}}
{{- end -}}
{{- if $digest -}}
{{- printf "%s@%s" $repo $digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end }}

{{- define "slm-operator.image" -}}
{{- include "slm-operator.imageRef" (dict "root" .) }}
{{- end }}

{{- define "slm-operator.agentImage" -}}
{{- include "slm-operator.imageRef" (dict "root" . "image" .Values.agent.image) }}
{{- end }}

{{- /* The trainer image of FineTuneJobs (its own repository: it never inherits the operator's digest). */}}
{{- define "slm-operator.trainerImage" -}}
{{- include "slm-operator.imageRef" (dict "root" . "image" .Values.trainer.image) }}
{{- end }}

{{- define "slm-operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "slm-operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "slm-operator.agentServiceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "slm-operator.componentName" (dict "root" . "suffix" "agent")) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Annotations of the CRDs: keep on uninstall (Helm and Argo CD) plus crds.annotations. */}}
{{- define "slm-operator.crdAnnotations" -}}
{{- $a := dict }}
{{- if .Values.crds.keep }}
{{- $_ := set $a "helm.sh/resource-policy" "keep" }}
{{- $_ := set $a "argocd.argoproj.io/sync-options" "Prune=false,Delete=false" }}
{{- end }}
{{- $a = merge (deepCopy (default dict .Values.crds.annotations)) $a }}
{{- if $a }}
{{- toYaml $a }}
{{- end }}
{{- end }}

{{/* The Lease the operator holds with --leader-elect (controllers/leader.py). */}}
{{- define "slm-operator.leaseName" -}}
slm-operator-leader
{{- end }}

{{- define "slm-operator.gatewayServiceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "slm-operator.componentName" (dict "root" . "suffix" "gateway")) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret holding the gateway's caller-hash salt: the user's existing one, or the one the chart creates.
*/}}
{{- define "slm-operator.gatewaySaltSecretName" -}}
{{- default (include "slm-operator.componentName" (dict "root" . "suffix" "gateway-salt")) .Values.gateway.capture.saltSecret.existingSecret }}
{{- end }}

{{/* A Deployment's affinity: .affinity (the user's), plus, unless it sets podAntiAffinity itself, a pod
anti-affinity over the component's own pods per kubernetes.io/hostname, so that its replicas land on different
nodes where the cluster has them (`preferred`: a soft spread, they still schedule on one node; `required`: never
two on a node; `none`). include "slm-operator.affinity" (dict "root" $ "component" "gateway" "values" $g) */}}
{{- define "slm-operator.affinity" -}}
{{- $affinity := deepCopy (default dict .values.affinity) -}}
{{- $mode := .values.podAntiAffinity -}}
{{- if and (ne $mode "none") (not (hasKey $affinity "podAntiAffinity")) -}}
{{- $selector := include "slm-operator.selectorLabels" (dict "root" .root "component" .component) | fromYaml -}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" $selector) -}}
{{- if eq $mode "required" -}}
{{- $_ := set $affinity "podAntiAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list $term)) -}}
{{- else -}}
{{- $preferred := list (dict "weight" 100 "podAffinityTerm" $term) -}}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" $preferred) -}}
{{- end -}}
{{- end -}}
{{- with $affinity -}}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end }}
