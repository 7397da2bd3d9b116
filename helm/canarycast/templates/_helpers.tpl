{{/* Chart name, truncated to 63 characters (a DNS label). */}}
{{- define "canarycast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already contains the chart's. */}}
{{- define "canarycast.fullname" -}}
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

{{- define "canarycast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The standard labels (app.kubernetes.io/*) of every resource. */}}
{{- define "canarycast.labels" -}}
helm.sh/chart: {{ include "canarycast.chart" . }}
{{ include "canarycast.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: canarycast
{{- end }}

{{- define "canarycast.selectorLabels" -}}
app.kubernetes.io/name: {{ include "canarycast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component: (dict "root" $ "component" "server" "variant" "stable").
*/}}
{{- define "canarycast.componentLabels" -}}
{{ include "canarycast.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with .variant }}
canarycast.io/variant: {{ . }}
{{- end }}
{{- end }}

{{- define "canarycast.componentSelector" -}}
{{ include "canarycast.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with .variant }}
canarycast.io/variant: {{ . }}
{{- end }}
{{- end }}

{{- define "canarycast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "canarycast.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "canarycast.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Names of the parts. */}}
{{- define "canarycast.controllerName" -}}
{{- printf "%s-controller" (include "canarycast.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "canarycast.routerName" -}}
{{- printf "%s-router" (include "canarycast.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "canarycast.serverName" -}}
{{- printf "%s-%s" (include "canarycast.fullname" .root) .variant | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "canarycast.registryClaim" -}}
{{- default (printf "%s-registry" (include "canarycast.fullname" .)) .Values.registry.persistence.existingClaim }}
{{- end }}

{{/* The observation stores' claim (one SQLite file per router pod). */}}
{{- define "canarycast.observationsClaim" -}}
{{- default (printf "%s-observations" (include "canarycast.fullname" .)) .Values.observations.persistence.existingClaim }}
{{- end }}
{{- define "canarycast.adminSecret" -}}
{{- default (printf "%s-admin" (include "canarycast.fullname" .)) .Values.controller.adminToken.existingSecret }}
{{- end }}

{{/* Where the registry is mounted in pods. */}}
{{- define "canarycast.registryPath" -}}
{{- if eq .Values.registry.source "image" }}{{ .Values.registry.imagePath }}{{ else }}/var/lib/canarycast/registry{{ end }}
{{- end }}

{{/* The addresses the routers (and the controller) send calls to: the headless
Services, which resolve to every ready pod, so routers balance per call. */}}
{{- define "canarycast.stableAddress" -}}
dns:///{{ include "canarycast.serverName" (dict "root" . "variant" "stable") }}-pods.{{ .Release.Namespace }}.svc:{{ .Values.server.port }}
{{- end }}
{{- define "canarycast.canaryAddress" -}}
dns:///{{ include "canarycast.serverName" (dict "root" . "variant" "canary") }}-pods.{{ .Release.Namespace }}.svc:{{ .Values.server.port }}
{{- end }}
{{/* Worker processes of a pod (dict "workers" "resources"): `workers` when set, else one
per whole core of the CPU request ("500m" and "1": 1, "2500m": 2). */}}
{{- define "canarycast.workersFromCPU" -}}
{{- if .workers -}}
{{- int .workers -}}
{{- else -}}
{{- $cpu := toString (dig "requests" "cpu" "1" (.resources | default dict)) -}}
{{- $millis := 0 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $millis = atoi (trimSuffix "m" $cpu) -}}
{{- else -}}
{{- $millis = int (mulf (float64 $cpu) 1000) -}}
{{- end -}}
{{- max 1 (div $millis 1000) -}}
{{- end -}}
{{- end }}

{{/* Worker processes of a variant's server pods (dict "root" "variant"). */}}
{{- define "canarycast.serverWorkers" -}}
{{- $v := index .root.Values .variant -}}
{{- include "canarycast.workersFromCPU" (dict "workers" .root.Values.server.workers "resources" $v.resources) -}}
{{- end }}

{{/* A Kubernetes memory quantity ("2Gi", "1536Mi", "2G", "500M", "1048576", "1.5Gi")
in MiB, as a float. */}}
{{- define "canarycast.memoryMiB" -}}
{{- $q := toString . -}}
{{- $units := list (list "Ki" (divf 1.0 1024)) (list "Mi" 1.0) (list "Gi" 1024.0) (list "Ti" 1048576.0) (list "k" (divf 1000.0 1048576)) (list "M" (divf 1000000.0 1048576)) (list "G" (divf 1000000000.0 1048576)) (list "T" (divf 1000000000000.0 1048576)) -}}
{{- $mib := -1.0 -}}
{{- range $u := $units -}}
{{- if and (lt $mib 0.0) (hasSuffix (index $u 0) $q) -}}
{{- $mib = mulf (float64 (trimSuffix (index $u 0) $q)) (index $u 1) -}}
{{- end -}}
{{- end -}}
{{- if lt $mib 0.0 -}}
{{- $mib = divf (float64 $q) 1048576.0 -}}
{{- end -}}
{{- $mib -}}
{{- end }}

{{/* Fails the render when a variant's memory limit cannot hold its worker processes
(dict "root" "variant"): each worker loads its own copy of the model and torch. */}}
{{- define "canarycast.checkServerMemory" -}}
{{- $v := index .root.Values .variant -}}
{{- $per := .root.Values.server.memoryPerWorker | default "" | toString -}}
{{- $limit := dig "limits" "memory" "" ($v.resources | default dict) | toString -}}
{{- if and $per (ne $per "0") $limit -}}
{{- $workers := int (include "canarycast.serverWorkers" .) -}}
{{- $need := mulf (float64 $workers) (float64 (include "canarycast.memoryMiB" $per)) -}}
{{- $have := float64 (include "canarycast.memoryMiB" $limit) -}}
{{- if gt $need $have -}}
{{- fail (printf "%s.resources.limits.memory (%s) cannot hold %d worker processes of server.memoryPerWorker (%s each, %dMi in all): raise the limit, or lower server.workers or %s.resources.requests.cpu (workers follow it), or set server.memoryPerWorker to what one worker of your model takes" .variant $limit $workers $per (int (ceil $need)) .variant) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* The router's (and controller's) address arguments for a variant, one list item each:
the headless Service on the shared port for one worker per pod, or on each worker's own
port, so that every worker is a replica and takes its share of the calls. */}}
{{- define "canarycast.serverAddressArgs" -}}
{{- $workers := int (include "canarycast.serverWorkers" .) -}}
{{- $host := printf "dns:///%s-pods.%s.svc" (include "canarycast.serverName" .) .root.Release.Namespace -}}
{{- if eq $workers 1 }}
- {{ $host }}:{{ .root.Values.server.port }}
{{- else }}
{{- range $i := until $workers }}
- {{ $host }}:{{ add $.root.Values.server.workerPortBase $i }}
{{- end }}
{{- end }}
{{- end }}

{{- define "canarycast.controllerAddress" -}}
{{ include "canarycast.controllerName" . }}:{{ .Values.controller.port }}
{{- end }}

{{/* Hardening shared by every pod and container. */}}
{{- define "canarycast.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "canarycast.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/* A writable /tmp on a read-only root filesystem. */}}
{{- define "canarycast.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end }}

{{/* Environment of every canarycast process (JSON logs; OTel settings added per part). */}}
{{- define "canarycast.commonEnv" -}}
- name: CANARYCAST_LOG_LEVEL
  value: INFO
- name: HOME
  value: /tmp
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.pod.name=$(POD_NAME),k8s.namespace.name={{ .Release.Namespace }},service.namespace={{ .Release.Namespace }}"
{{- end }}

{{/* Init container: wait until a model reference (NAME@ALIAS, NAME:VERSION) resolves. */}}
{{- define "canarycast.waitForModel" -}}
- name: wait-for-model
  image: {{ include "canarycast.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  args:
    - models
    - --registry
    - {{ include "canarycast.registryPath" .root }}
    - show
    - {{ .ref }}
    - --wait
    - "86400"
  securityContext:
    {{- include "canarycast.securityContext" .root | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 64Mi
    limits:
      memory: 256Mi
  volumeMounts:
    - name: registry
      mountPath: {{ include "canarycast.registryPath" .root }}
      readOnly: true
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/*
In-cluster TLS (`tls.internal`): one kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt)
mounted read-only in every pod that listens on or dials a gRPC port inside the release.
The same certificate serves every listener and, under `mtls`, is every client's
certificate too; ca.crt is the CA each side trusts.
*/}}
{{- define "canarycast.internalTLSDir" -}}
/etc/canarycast/internal-tls
{{- end }}

{{- define "canarycast.internalTLSVolume" -}}
- name: internal-tls
  secret:
    secretName: {{ .Values.tls.internal.secretName }}
    defaultMode: 0440
{{- end }}

{{- define "canarycast.internalTLSMount" -}}
- name: internal-tls
  mountPath: {{ include "canarycast.internalTLSDir" . }}
  readOnly: true
{{- end }}

{{/* Flags of a TLS listener: (dict "root" $ "prefix" "--tls") gives --tls-cert, --tls-key
(and --tls-client-ca under mtls). */}}
{{- define "canarycast.internalTLSServerArgs" -}}
{{- $dir := include "canarycast.internalTLSDir" .root -}}
- {{ .prefix }}-cert
- {{ $dir }}/tls.crt
- {{ .prefix }}-key
- {{ $dir }}/tls.key
{{- if .root.Values.tls.internal.mtls }}
- {{ .prefix }}-client-ca
- {{ $dir }}/ca.crt
{{- end }}
{{- end }}

{{/* Flags of a TLS client: (dict "root" $ "prefix" "--backend-tls") gives
--backend-tls-ca (and the client certificate and key under mtls). */}}
{{- define "canarycast.internalTLSClientArgs" -}}
{{- $dir := include "canarycast.internalTLSDir" .root -}}
- {{ .prefix }}-ca
- {{ $dir }}/ca.crt
{{- if .root.Values.tls.internal.mtls }}
- {{ .prefix }}-cert
- {{ $dir }}/tls.crt
- {{ .prefix }}-key
- {{ $dir }}/tls.key
{{- end }}
{{- end }}

{{/* The OTel SDK's OTLP exporter over TLS: its standard variables (the endpoint must be
https://). */}}
{{- define "canarycast.internalTLSExporterEnv" -}}
{{- $dir := include "canarycast.internalTLSDir" . -}}
- name: OTEL_EXPORTER_OTLP_CERTIFICATE
  value: {{ $dir }}/ca.crt
{{- if .Values.tls.internal.mtls }}
- name: OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE
  value: {{ $dir }}/tls.crt
- name: OTEL_EXPORTER_OTLP_CLIENT_KEY
  value: {{ $dir }}/tls.key
{{- end }}
{{- end }}

{{/* An exec probe over the in-cluster TLS: `canarycast health` (grpc only, no torch) dials
the pod's own port and checks the certificate against the name clients use.
(dict "root" $ "port" 50051 "service" "" "name" "host.ns.svc") */}}
{{- define "canarycast.internalTLSHealthExec" -}}
{{- $dir := include "canarycast.internalTLSDir" .root -}}
exec:
  command:
    - canarycast
    - health
    - --target
    - 127.0.0.1:{{ .port }}
    - --service
    - {{ .service | quote }}
    - --tls-server-name
    - {{ .name }}
    - --tls-ca
    - {{ $dir }}/ca.crt
    {{- if .root.Values.tls.internal.mtls }}
    - --tls-cert
    - {{ $dir }}/tls.crt
    - --tls-key
    - {{ $dir }}/tls.key
    {{- end }}
timeoutSeconds: 3
{{- end }}

{{/* The host names the in-cluster certificate must carry (subjectAltName), one a line. */}}
{{- define "canarycast.internalTLSNames" -}}
{{ include "canarycast.serverName" (dict "root" . "variant" "stable") }}-pods.{{ .Release.Namespace }}.svc
{{- if .Values.canary.enabled }}
{{ include "canarycast.serverName" (dict "root" . "variant" "canary") }}-pods.{{ .Release.Namespace }}.svc
{{- end }}
{{ include "canarycast.controllerName" . }}
{{ include "canarycast.controllerName" . }}.{{ .Release.Namespace }}.svc
{{- if eq .Values.tracing.mode "collector" }}
{{ (urlParse .Values.tracing.collectorEndpoint).host | splitList ":" | first }}
{{- end }}
{{- end }}
