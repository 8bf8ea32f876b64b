{{/* Names. */}}
{{- define "outpost-runner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "outpost-runner.fullname" -}}
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

{{- define "outpost-runner.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "outpost-runner.selectorLabels" . }}
app.kubernetes.io/version: {{ default .Chart.AppVersion .Values.image.tag | trunc 63 | quote }}
app.kubernetes.io/component: runner
app.kubernetes.io/part-of: outpost
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "outpost-runner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "outpost-runner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "outpost-runner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "outpost-runner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "outpost-runner.serviceName" -}}
{{- printf "%s-metrics" (include "outpost-runner.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "outpost-runner.tokenSecretName" -}}
{{- if .Values.token.existingSecret }}
{{- .Values.token.existingSecret }}
{{- else if .Values.token.value }}
{{- printf "%s-token" (include "outpost-runner.fullname" .) }}
{{- else }}
{{- fail "the runner token is required: --set token.existingSecret=SECRET (recommended) or --set token.value=oprt_…" }}
{{- end }}
{{- end }}

{{- define "outpost-runner.tokenSecretKey" -}}
{{- if .Values.token.existingSecret }}{{ .Values.token.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* The namespace of job pods, claims and secrets: where the Role is. */}}
{{- define "outpost-runner.jobsNamespace" -}}
{{- default .Release.Namespace .Values.jobs.namespace }}
{{- end }}

{{- define "outpost-runner.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The Role's rules, from files/role-rules.json: the one list of what the Kubernetes backend may do
(deploy/check.py compares the rendered Role with the file; the backend's tests compare the calls
they saw with it). One rule per resource, so that the list reads and compares as it is written.
*/}}
{{- define "outpost-runner.roleRules" -}}
{{- $rules := list }}
{{- $file := .Files.Get "files/role-rules.json" }}
{{- if not $file }}{{ fail "files/role-rules.json is missing from the chart" }}{{ end }}
{{- range $file | mustFromJson }}
{{- $rules = append $rules (dict "apiGroups" (list .apiGroup) "resources" (list .resource) "verbs" .verbs) }}
{{- end }}
{{- toYaml $rules }}
{{- end }}

{{/*
The [executor] section of runner.toml, as JSON: the one mapping from the `jobs` values to the
Kubernetes backend's configuration keys. An empty value leaves its key out (the backend's default
applies); jobs.extraConfig is merged last and wins.
*/}}
{{- define "outpost-runner.executorConfig" -}}
{{- $j := .Values.jobs }}
{{- $e := dict "namespace" (include "outpost-runner.jobsNamespace" .) }}
{{- if $j.workspace }}{{ $_ := set $e "workspace" $j.workspace }}{{ end }}
{{- if $j.workspaceSize }}{{ $_ := set $e "workspace_size" $j.workspaceSize }}{{ end }}
{{- if $j.storageClass }}{{ $_ := set $e "storage_class" $j.storageClass }}{{ end }}
{{- if $j.cacheRetention }}{{ $_ := set $e "cache_retention" $j.cacheRetention }}{{ end }}
{{- if $j.unschedulableTimeout }}{{ $_ := set $e "unschedulable_timeout" $j.unschedulableTimeout }}{{ end }}
{{- if $j.imagePullGrace }}{{ $_ := set $e "image_pull_grace" $j.imagePullGrace }}{{ end }}
{{- if $j.nodeSelector }}{{ $_ := set $e "node_selector" $j.nodeSelector }}{{ end }}
{{- if $j.tolerations }}{{ $_ := set $e "tolerations" $j.tolerations }}{{ end }}
{{- if $j.serviceAccount }}{{ $_ := set $e "service_account" $j.serviceAccount }}{{ end }}
{{- if $j.imagePullSecrets }}{{ $_ := set $e "image_pull_secrets" $j.imagePullSecrets }}{{ end }}
{{- /* Kubernetes quantities, always as strings: cpu: 2 in the values is "2" in TOML. */}}
{{- if $j.resources.default.cpu }}{{ $_ := set $e "cpu" (toString $j.resources.default.cpu) }}{{ end }}
{{- if $j.resources.default.memory }}{{ $_ := set $e "memory" (toString $j.resources.default.memory) }}{{ end }}
{{- if $j.resources.max.cpu }}{{ $_ := set $e "cpu_max" (toString $j.resources.max.cpu) }}{{ end }}
{{- if $j.resources.max.memory }}{{ $_ := set $e "memory_max" (toString $j.resources.max.memory) }}{{ end }}
{{- if $j.podTemplatePatch }}{{ $_ := set $e "pod_template_patch" $j.podTemplatePatch }}{{ end }}
{{- toJson (mergeOverwrite $e (deepCopy $j.extraConfig)) }}
{{- end }}

{{/* runner.toml: runner.config's top-level keys, then [executor]. */}}
{{- define "outpost-runner.runnerToml" -}}
{{- $root := deepCopy .Values.runner.config }}
{{- if hasKey $root "executor" }}{{ fail "runner.config.executor: put [executor] keys under jobs (or jobs.extraConfig)" }}{{ end }}
{{- $_ := set $root "executor" (include "outpost-runner.executorConfig" . | mustFromJson) -}}
# runner.toml of runner-k8s, rendered by the outpost-runner chart from its values
# (runner.config and jobs); every key is in docs/runner.md and deploy/README.md.
{{ include "outpost-runner.tomlTable" (dict "path" (list) "table" $root) | trim }}
{{- end }}

{{/*
TOML of a table: its keys with values that are not tables first, then each sub-table under its
own [header]; arrays and tables inside arrays are inline. Written here rather than with toToml,
which prints whole numbers from values as floats (1000.0); a field the backend reads as an
integer (tolerationSeconds, runAsUser) must stay one.
*/}}
{{- define "outpost-runner.tomlTable" -}}
{{- $path := .path }}
{{- $table := .table }}
{{- $scalars := 0 }}
{{- range $k, $v := $table }}{{ if ne (kindOf $v) "map" }}{{ $scalars = add1 $scalars }}{{ end }}{{ end }}
{{- /* A table holding only tables needs no header of its own: theirs define it. */}}
{{- if and $path (or $scalars (not $table)) }}
[{{ include "outpost-runner.tomlPath" $path }}]
{{- end }}
{{- range $k := keys $table | sortAlpha }}
{{- $v := get $table $k }}
{{- if and (ne (kindOf $v) "map") (ne (kindOf $v) "invalid") }}
{{ include "outpost-runner.tomlKey" $k }} = {{ include "outpost-runner.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $table | sortAlpha }}
{{- $v := get $table $k }}
{{- if eq (kindOf $v) "map" }}
{{ include "outpost-runner.tomlTable" (dict "path" (append $path $k) "table" $v) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "outpost-runner.tomlPath" -}}
{{- $parts := list }}
{{- range . }}{{ $parts = append $parts (include "outpost-runner.tomlKey" .) }}{{ end }}
{{- join "." $parts }}
{{- end }}

{{- define "outpost-runner.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/* One TOML value (inline). JSON string escapes are valid TOML basic-string escapes. */}}
{{- define "outpost-runner.tomlValue" -}}
{{- $kind := kindOf . }}
{{- if eq $kind "string" }}{{ toJson . }}
{{- else if eq $kind "bool" }}{{ . }}
{{- else if or (eq $kind "int") (eq $kind "int64") (eq $kind "uint64") }}{{ printf "%d" . }}
{{- else if eq $kind "float64" }}
{{- if eq . (floor .) }}{{ printf "%d" (int64 .) }}{{ else }}{{ toJson . }}{{ end }}
{{- else if eq $kind "slice" }}
{{- $items := list }}
{{- range . }}{{ $items = append $items (include "outpost-runner.tomlValue" .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if eq $kind "map" }}
{{- $items := list }}
{{- $m := . }}
{{- range $k := keys $m | sortAlpha }}
{{- $v := get $m $k }}
{{- if ne (kindOf $v) "invalid" }}
{{- $items = append $items (printf "%s = %s" (include "outpost-runner.tomlKey" $k) (include "outpost-runner.tomlValue" $v)) }}
{{- end }}
{{- end }}
{{- printf "{ %s }" (join ", " $items) }}
{{- else }}
{{- fail (printf "runner.toml: a %s value cannot be written in TOML (null?)" $kind) }}
{{- end }}
{{- end }}

{{/* Where things are inside the runner's pod (fixed by the image and the docs). */}}
{{- define "outpost-runner.tokenDir" -}}/var/run/outpost{{- end }}
{{- define "outpost-runner.secretsDir" -}}/var/run/outpost-secrets{{- end }}
{{- define "outpost-runner.configDir" -}}/etc/outpost{{- end }}
{{- define "outpost-runner.stateDir" -}}/var/lib/outpost{{- end }}

{{/* The runner's pod template, shared by the Deployment and the StatefulSet. */}}
{{- define "outpost-runner.podTemplate" -}}
{{- if and .Values.runner.name (gt (int .Values.replicas) 1) }}
{{- fail "runner.name must be empty with replicas > 1: every runner needs its own name (the pod name is used)" }}
{{- end -}}
metadata:
  labels:
    {{- include "outpost-runner.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/component: runner
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "outpost-runner.runnerToml" . | sha256sum }}
    {{- if and (not .Values.token.existingSecret) .Values.token.value }}
    checksum/token: {{ .Values.token.value | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "outpost-runner.serviceAccountName" . }}
  # The runner talks to the API server with this account's token.
  automountServiceAccountToken: true
  # No service environment variables: a Service named outpost-… would otherwise put OUTPOST_…
  # variables into the runner's environment, where its configuration lives.
  enableServiceLinks: false
  # Drain grace (OUTPOST_DRAIN_GRACE) plus 30 s to hand in the last logs and statuses.
  terminationGracePeriodSeconds: {{ add (int .Values.runner.drainGraceSeconds) 30 }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: runner
      image: {{ include "outpost-runner.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - {{ printf "--hub=%s" (required "hub.url is required: --set hub.url=https://hub.example.com" .Values.hub.url) | quote }}
        - --token-file={{ include "outpost-runner.tokenDir" . }}/token
        {{- if .Values.runner.name }}
        - {{ printf "--name=%s" .Values.runner.name | quote }}
        {{- else }}
        - --name=$(POD_NAME)
        {{- end }}
        {{- with .Values.runner.labels }}
        - {{ printf "--labels=%s" (join "," .) | quote }}
        {{- end }}
        - --concurrency={{ int .Values.runner.concurrency }}
        - --state-dir={{ include "outpost-runner.stateDir" . }}
        - --metrics-listen=0.0.0.0:{{ int .Values.metrics.port }}
        - --config={{ include "outpost-runner.configDir" . }}/runner.toml
        {{- if .Values.runner.secretsSecret }}
        - --secrets-dir={{ include "outpost-runner.secretsDir" . }}
        {{- end }}
        {{- range .Values.runner.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: OUTPOST_DRAIN_GRACE
          value: {{ printf "%ds" (int .Values.runner.drainGraceSeconds) | quote }}
        - name: OUTPOST_LOG_FORMAT
          value: {{ .Values.runner.logFormat | quote }}
        - name: RUST_LOG
          value: {{ .Values.runner.logLevel | quote }}
        - name: TMPDIR
          value: /tmp
        {{- with .Values.runner.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: {{ int .Values.metrics.port }}
          protocol: TCP
      # /readyz answers 503 from the first SIGTERM on (draining) and while the runner takes no jobs.
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: token
          mountPath: {{ include "outpost-runner.tokenDir" . }}
          readOnly: true
        - name: config
          mountPath: {{ include "outpost-runner.configDir" . }}
          readOnly: true
        {{- if .Values.runner.secretsSecret }}
        - name: pipeline-secrets
          mountPath: {{ include "outpost-runner.secretsDir" . }}
          readOnly: true
        {{- end }}
        - name: state
          mountPath: {{ include "outpost-runner.stateDir" . }}
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: token
      secret:
        secretName: {{ include "outpost-runner.tokenSecretName" . }}
        items:
          - key: {{ include "outpost-runner.tokenSecretKey" . }}
            path: token
        defaultMode: 0440
    - name: config
      configMap:
        name: {{ include "outpost-runner.fullname" . }}-config
        defaultMode: 0444
    {{- with .Values.runner.secretsSecret }}
    - name: pipeline-secrets
      secret:
        secretName: {{ . }}
        defaultMode: 0440
    {{- end }}
    {{- if not .Values.persistence.enabled }}
    - name: state
      emptyDir:
        {{- if .Values.persistence.emptyDirSizeLimit }}
        sizeLimit: {{ .Values.persistence.emptyDirSizeLimit }}
        {{- else }} {}
        {{- end }}
    {{- end }}
    - name: tmp
      emptyDir: {}
{{- end }}
