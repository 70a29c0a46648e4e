{{/* Names and labels, Kubernetes' recommended app.kubernetes.io/* set. */}}
{{- define "viadk8s.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "viadk8s.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/name: {{ .Chart.Name | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: viadk8s
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
{{- end -}}

{{- define "viadk8s.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{- define "viadk8s.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "viadk8s.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "viadk8s.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "viadk8s.mlflowImage" -}}
{{- $repository := .Values.mlflow.image.repository | default .Values.image.repository -}}
{{- $tag := .Values.mlflow.image.tag | default .Values.image.tag | default .Chart.AppVersion -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{- define "viadk8s.mlflowService" -}}
{{- printf "%s-mlflow" (include "viadk8s.fullname" .) -}}
{{- end -}}

{{/* viadk8s.yaml: config with the release's defaults filled in (namespace, MLflow URI, S3 secret). */}}
{{- define "viadk8s.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $cluster := $config.cluster | default dict -}}
{{- if not $cluster.namespace -}}
{{- $_ := set $cluster "namespace" .Release.Namespace -}}
{{- end -}}
{{- if and .Values.credentials.s3.existingSecret (not (hasKey $cluster "secrets")) -}}
{{- $_ := set $cluster "secrets" (dict "env_from" (list .Values.credentials.s3.existingSecret)) -}}
{{- end -}}
{{- if and .Values.hostNetwork (not (hasKey $cluster "host_network")) -}}
{{- $_ := set $cluster "host_network" true -}}
{{- end -}}
{{- $_ := set $config "cluster" $cluster -}}
{{- $mlflow := $config.mlflow | default dict -}}
{{- if and .Values.mlflow.enabled (not $mlflow.tracking_uri) -}}
{{- $host := ternary "127.0.0.1" (printf "%s.%s.svc" (include "viadk8s.mlflowService" .) .Release.Namespace) .Values.hostNetwork -}}
{{- $_ := set $mlflow "tracking_uri" (printf "http://%s:%d" $host (int .Values.mlflow.port)) -}}
{{- end -}}
{{- $_ := set $config "mlflow" $mlflow -}}
{{- if not $config.store -}}
{{- $_ := unset $config "store" -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The Pod Security "restricted" profile, for every pod of the chart. */}}
{{- define "viadk8s.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "viadk8s.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod-level network settings: the node's network on single-node clusters without a pod network. */}}
{{- define "viadk8s.podNetwork" -}}
{{- if .Values.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- end -}}

{{/* MLflow's health check; on the node's network it listens on 127.0.0.1 only. */}}
{{- define "viadk8s.mlflowHealth" -}}
path: /health
port: http
{{- if .Values.hostNetwork }}
host: 127.0.0.1
{{- end }}
{{- end -}}
