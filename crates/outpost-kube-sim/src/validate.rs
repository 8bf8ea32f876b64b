//! What the apiserver checks and fills in on every object it receives: strict decoding against
//! the Kubernetes 1.33 schema (the k8s-openapi types; a field that does not survive the round
//! trip is unknown, as `fieldValidation=Strict` refuses it), the validation rules the backend can
//! run into (names, containers, volumes, probes, resources, claims, secret keys), and defaults.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, Probe, Secret, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, Cause};
use crate::meta;
use crate::quantity;

/// Decodes `input` as `T`, refusing type errors (400) and unknown fields (400, as strict field
/// validation does).
pub(crate) fn strict<T: DeserializeOwned + Serialize>(
    kind: &str,
    input: &Value,
) -> Result<T, ApiError> {
    let typed: T = serde_json::from_value(input.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {e}"
        ))
    })?;
    let round = serde_json::to_value(&typed)
        .map_err(|e| ApiError::internal(format!("re-encoding a {kind}: {e}")))?;
    let mut unknown = Vec::new();
    unknown_fields(input, &round, "", &mut unknown);
    if !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            list.join(", ")
        )));
    }
    Ok(typed)
}

/// Keys of `input` that the round trip lost. Keys carrying only "nothing" (null, `[]`, `{}`)
/// are not reported: the typed model drops empty values on the way back.
fn unknown_fields(input: &Value, round: &Value, path: &str, out: &mut Vec<String>) {
    match (input, round) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(w) => unknown_fields(v, w, &here, out),
                    None if is_empty(v) => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b.iter()).enumerate() {
                unknown_fields(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Name, generateName, labels and annotations. `name` is the final name (generated or given).
pub(crate) fn check_meta(meta: &ObjectMeta, name: &str, causes: &mut Vec<Cause>) {
    if name.is_empty() {
        causes.push(Cause::required_why(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if !meta::is_dns1123_subdomain(name) {
        causes.push(Cause::invalid(
            "metadata.name",
            &Value::String(name.into()),
            meta::DNS1123_SUBDOMAIN_MSG,
        ));
    }
    for (k, v) in meta.labels.iter().flatten() {
        if let Err(why) = meta::check_qualified_name(k) {
            causes.push(Cause::invalid(
                "metadata.labels",
                &Value::String(k.clone()),
                &why,
            ));
        }
        if !meta::is_label_value(v) {
            causes.push(Cause::invalid(
                "metadata.labels",
                &Value::String(v.clone()),
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            ));
        }
    }
    let mut total = 0;
    for (k, v) in meta.annotations.iter().flatten() {
        total += k.len() + v.len();
        if let Err(why) = meta::check_qualified_name(&k.to_lowercase()) {
            causes.push(Cause::invalid(
                "metadata.annotations",
                &Value::String(k.clone()),
                &why,
            ));
        }
    }
    if total > 256 * 1024 {
        causes.push(Cause {
            field: "metadata.annotations".into(),
            reason: "FieldValueTooLong",
            message: "Too long: must have at most 262144 bytes".into(),
        });
    }
    for (i, o) in meta.owner_references.iter().flatten().enumerate() {
        let f = format!("metadata.ownerReferences[{i}]");
        if o.uid.is_empty() {
            causes.push(Cause::required(format!("{f}.uid")));
        }
        if o.name.is_empty() {
            causes.push(Cause::required(format!("{f}.name")));
        }
        if o.kind.is_empty() {
            causes.push(Cause::required(format!("{f}.kind")));
        }
        if o.api_version.is_empty() {
            causes.push(Cause::required(format!("{f}.apiVersion")));
        }
    }
}

fn check_quantities(
    map: Option<&BTreeMap<String, Quantity>>,
    _field: &str,
) -> Result<(), ApiError> {
    for q in map.into_iter().flat_map(|m| m.values()) {
        if quantity::parse(&q.0).is_none() {
            return Err(ApiError::bad_request(quantity::QUANTITY_MSG));
        }
    }
    Ok(())
}

/// The pod rules. `Err` is a decoding-level failure (malformed quantity); the causes are 422s.
pub(crate) fn check_pod(pod: &Pod, name: &str) -> Result<Vec<Cause>, ApiError> {
    let mut causes = Vec::new();
    check_meta(&pod.metadata, name, &mut causes);
    let Some(spec) = &pod.spec else {
        causes.push(Cause::required("spec"));
        return Ok(causes);
    };
    if spec.containers.is_empty() {
        causes.push(Cause::required("spec.containers"));
    }
    // Volumes: names and exactly one source each.
    let mut volumes = BTreeSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let f = format!("spec.volumes[{i}]");
        if v.name.is_empty() {
            causes.push(Cause::required(format!("{f}.name")));
        } else if !meta::is_dns1123_label(&v.name) {
            causes.push(Cause::invalid(
                format!("{f}.name"),
                &Value::String(v.name.clone()),
                meta::DNS1123_LABEL_MSG,
            ));
        } else if !volumes.insert(v.name.clone()) {
            causes.push(Cause::duplicate(format!("{f}.name"), &v.name));
        }
        let sources = serde_json::to_value(v)
            .ok()
            .and_then(|x| {
                x.as_object()
                    .map(|o| o.keys().filter(|k| *k != "name").count())
            })
            .unwrap_or(0);
        if sources == 0 {
            causes.push(Cause::required_why(f.clone(), "must specify a volume type"));
        } else if sources > 1 {
            causes.push(Cause::forbidden(
                f.clone(),
                "may not specify more than 1 volume type",
            ));
        }
        if let Some(pvc) = &v.persistent_volume_claim
            && pvc.claim_name.is_empty()
        {
            causes.push(Cause::required(format!(
                "{f}.persistentVolumeClaim.claimName"
            )));
        }
        if let Some(eph) = &v.ephemeral {
            match &eph.volume_claim_template {
                None => causes.push(Cause::required(format!(
                    "{f}.ephemeral.volumeClaimTemplate"
                ))),
                Some(t) => {
                    check_pvc_spec(
                        &t.spec,
                        &format!("{f}.ephemeral.volumeClaimTemplate.spec"),
                        &mut causes,
                    )?;
                    let claim = format!("{name}-{}", v.name);
                    if !name.is_empty() && !meta::is_dns1123_subdomain(&claim) {
                        causes.push(Cause::invalid(
                            format!("{f}.name"),
                            &Value::String(claim),
                            "the ephemeral volume claim name (pod name + '-' + volume name) must be a lowercase RFC 1123 subdomain",
                        ));
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    let inits = spec.init_containers.iter().flatten().map(|c| (c, true));
    let mains = spec.containers.iter().map(|c| (c, false));
    let (mut i_init, mut i_main) = (0, 0);
    for (c, init) in inits.chain(mains) {
        let f = if init {
            i_init += 1;
            format!("spec.initContainers[{}]", i_init - 1)
        } else {
            i_main += 1;
            format!("spec.containers[{}]", i_main - 1)
        };
        if c.name.is_empty() {
            causes.push(Cause::required(format!("{f}.name")));
        } else if !meta::is_dns1123_label(&c.name) {
            causes.push(Cause::invalid(
                format!("{f}.name"),
                &Value::String(c.name.clone()),
                meta::DNS1123_LABEL_MSG,
            ));
        } else if !names.insert(c.name.clone()) {
            causes.push(Cause::duplicate(format!("{f}.name"), &c.name));
        }
        check_container(c, &f, init, &volumes, &mut causes)?;
    }
    match spec.restart_policy.as_deref() {
        None | Some("Always" | "OnFailure" | "Never") => {}
        Some(other) => causes.push(Cause::not_supported(
            "spec.restartPolicy",
            other,
            &["Always", "OnFailure", "Never"],
        )),
    }
    if let Some(s) = spec.active_deadline_seconds
        && s <= 0
    {
        causes.push(Cause::invalid(
            "spec.activeDeadlineSeconds",
            &Value::from(s),
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    if let Some(s) = spec.termination_grace_period_seconds
        && s < 0
    {
        causes.push(Cause::invalid(
            "spec.terminationGracePeriodSeconds",
            &Value::from(s),
            "must be greater than or equal to 0",
        ));
    }
    for (i, h) in spec.host_aliases.iter().flatten().enumerate() {
        if h.ip.parse::<std::net::IpAddr>().is_err() {
            causes.push(Cause::invalid(
                format!("spec.hostAliases[{i}].ip"),
                &Value::String(h.ip.clone()),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
        for (j, n) in h.hostnames.iter().flatten().enumerate() {
            if !meta::is_dns1123_subdomain(n) {
                causes.push(Cause::invalid(
                    format!("spec.hostAliases[{i}].hostnames[{j}]"),
                    &Value::String(n.clone()),
                    meta::DNS1123_SUBDOMAIN_MSG,
                ));
            }
        }
    }
    if let Some(n) = &spec.node_name
        && !n.is_empty()
        && !meta::is_dns1123_subdomain(n)
    {
        causes.push(Cause::invalid(
            "spec.nodeName",
            &Value::String(n.clone()),
            meta::DNS1123_SUBDOMAIN_MSG,
        ));
    }
    Ok(causes)
}

fn check_container(
    c: &Container,
    f: &str,
    init: bool,
    volumes: &BTreeSet<String>,
    causes: &mut Vec<Cause>,
) -> Result<(), ApiError> {
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        causes.push(Cause::required(format!("{f}.image")));
    }
    let sidecar = c.restart_policy.as_deref() == Some("Always");
    match (init, c.restart_policy.as_deref()) {
        (_, None) | (true, Some("Always")) => {}
        (true, Some(other)) => causes.push(Cause::not_supported(
            format!("{f}.restartPolicy"),
            other,
            &["Always"],
        )),
        (false, Some(_)) => causes.push(Cause::forbidden(
            format!("{f}.restartPolicy"),
            "may not be set for non-init containers",
        )),
    }
    for (probe, field) in [
        (&c.liveness_probe, "livenessProbe"),
        (&c.readiness_probe, "readinessProbe"),
        (&c.startup_probe, "startupProbe"),
    ] {
        let Some(p) = probe else { continue };
        if init && !sidecar {
            causes.push(Cause::forbidden(
                format!("{f}.{field}"),
                "may not be set for init containers without restartPolicy=Always",
            ));
            continue;
        }
        check_probe(
            p,
            &format!("{f}.{field}"),
            field != "readinessProbe",
            causes,
        );
    }
    if init && !sidecar && c.lifecycle.is_some() {
        causes.push(Cause::forbidden(
            format!("{f}.lifecycle"),
            "may not be set for init containers without restartPolicy=Always",
        ));
    }
    let mut paths = BTreeSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mf = format!("{f}.volumeMounts[{i}]");
        if m.name.is_empty() {
            causes.push(Cause::required(format!("{mf}.name")));
        } else if !volumes.contains(&m.name) {
            causes.push(Cause::not_found(format!("{mf}.name"), &m.name));
        }
        if m.mount_path.is_empty() {
            causes.push(Cause::required(format!("{mf}.mountPath")));
        } else if !paths.insert(m.mount_path.clone()) {
            causes.push(Cause::invalid(
                format!("{mf}.mountPath"),
                &Value::String(m.mount_path.clone()),
                "must be unique",
            ));
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let ef = format!("{f}.env[{i}]");
        if e.name.is_empty() {
            causes.push(Cause::required(format!("{ef}.name")));
        } else if e.name.contains('=') || e.name.chars().any(|ch| !(' '..='~').contains(&ch)) {
            causes.push(Cause::invalid(
                format!("{ef}.name"),
                &Value::String(e.name.clone()),
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
        if let Some(from) = &e.value_from {
            if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
                causes.push(Cause::invalid(
                    format!("{ef}.valueFrom"),
                    &Value::String(String::new()),
                    "may not be specified when `value` is not empty",
                ));
            }
            let n = [
                from.secret_key_ref.is_some(),
                from.config_map_key_ref.is_some(),
                from.field_ref.is_some(),
                from.resource_field_ref.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if n != 1 {
                causes.push(Cause::invalid(
                    format!("{ef}.valueFrom"),
                    &Value::String(String::new()),
                    "may not have more than one field specified at a time",
                ));
            }
            if let Some(s) = &from.secret_key_ref {
                if s.name.is_empty() {
                    causes.push(Cause::required(format!("{ef}.valueFrom.secretKeyRef.name")));
                }
                if s.key.is_empty() {
                    causes.push(Cause::required(format!("{ef}.valueFrom.secretKeyRef.key")));
                }
            }
        }
    }
    for (i, e) in c.env_from.iter().flatten().enumerate() {
        if let Some(s) = &e.secret_ref
            && s.name.is_empty()
        {
            causes.push(Cause::required(format!("{f}.envFrom[{i}].secretRef.name")));
        }
    }
    for (i, p) in c.ports.iter().flatten().enumerate() {
        if !(1..=65535).contains(&p.container_port) {
            causes.push(Cause::invalid(
                format!("{f}.ports[{i}].containerPort"),
                &Value::from(p.container_port),
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(proto) = &p.protocol
            && !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP")
        {
            causes.push(Cause::not_supported(
                format!("{f}.ports[{i}].protocol"),
                proto,
                &["SCTP", "TCP", "UDP"],
            ));
        }
    }
    if let Some(r) = &c.resources {
        check_quantities(r.limits.as_ref(), f)?;
        check_quantities(r.requests.as_ref(), f)?;
        for (res, req) in r.requests.iter().flatten() {
            let Some(lim) = r.limits.as_ref().and_then(|l| l.get(res)) else {
                continue;
            };
            let (Some(a), Some(b)) = (quantity::parse(&req.0), quantity::parse(&lim.0)) else {
                continue;
            };
            if a > b {
                causes.push(Cause::invalid(
                    format!("{f}.resources.requests"),
                    &Value::String(req.0.clone()),
                    &format!("must be less than or equal to {res} limit of {}", lim.0),
                ));
            }
        }
    }
    Ok(())
}

fn check_probe(p: &Probe, f: &str, success_one: bool, causes: &mut Vec<Cause>) {
    let handlers = [
        p.exec.is_some(),
        p.tcp_socket.is_some(),
        p.http_get.is_some(),
        p.grpc.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if handlers == 0 {
        causes.push(Cause::required_why(f, "must specify a handler type"));
    } else if handlers > 1 {
        causes.push(Cause::forbidden(
            f,
            "may not specify more than 1 handler type",
        ));
    }
    if success_one && p.success_threshold.is_some_and(|s| s != 1) {
        causes.push(Cause::invalid(
            format!("{f}.successThreshold"),
            &Value::from(p.success_threshold.unwrap_or(1)),
            "must be 1",
        ));
    }
    for (v, name) in [
        (p.period_seconds, "periodSeconds"),
        (p.timeout_seconds, "timeoutSeconds"),
        (p.failure_threshold, "failureThreshold"),
    ] {
        if let Some(v) = v
            && v < 1
        {
            causes.push(Cause::invalid(
                format!("{f}.{name}"),
                &Value::from(v),
                "must be greater than or equal to 1",
            ));
        }
    }
}

pub(crate) const ACCESS_MODES: [&str; 4] = [
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

fn check_pvc_spec(
    spec: &PersistentVolumeClaimSpec,
    f: &str,
    causes: &mut Vec<Cause>,
) -> Result<(), ApiError> {
    let modes = spec.access_modes.clone().unwrap_or_default();
    if modes.is_empty() {
        causes.push(Cause::required_why(
            format!("{f}.accessModes"),
            "at least 1 access mode is required",
        ));
    }
    for m in &modes {
        if !ACCESS_MODES.contains(&m.as_str()) {
            causes.push(Cause::not_supported(
                format!("{f}.accessModes"),
                m,
                &ACCESS_MODES,
            ));
        }
    }
    if modes.iter().any(|m| m == "ReadWriteOncePod") && modes.len() > 1 {
        causes.push(Cause::forbidden(
            format!("{f}.accessModes"),
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
    let requests = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
    check_quantities(requests, f)?;
    check_quantities(spec.resources.as_ref().and_then(|r| r.limits.as_ref()), f)?;
    match requests.and_then(|r| r.get("storage")) {
        None => causes.push(Cause::required(format!("{f}.resources[storage]"))),
        Some(q) if quantity::parse(&q.0).is_none_or(|v| v <= 0.0) => causes.push(Cause::invalid(
            format!("{f}.resources.requests[storage]"),
            &Value::String(q.0.clone()),
            "must be greater than zero",
        )),
        Some(_) => {}
    }
    if let Some(mode) = &spec.volume_mode
        && !matches!(mode.as_str(), "Filesystem" | "Block")
    {
        causes.push(Cause::not_supported(
            format!("{f}.volumeMode"),
            mode,
            &["Block", "Filesystem"],
        ));
    }
    Ok(())
}

pub(crate) fn check_pvc(pvc: &PersistentVolumeClaim, name: &str) -> Result<Vec<Cause>, ApiError> {
    let mut causes = Vec::new();
    check_meta(&pvc.metadata, name, &mut causes);
    match &pvc.spec {
        None => causes.push(Cause::required("spec")),
        Some(spec) => check_pvc_spec(spec, "spec", &mut causes)?,
    }
    Ok(causes)
}

pub(crate) fn check_secret(secret: &Secret, name: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    check_meta(&secret.metadata, name, &mut causes);
    let mut total = 0;
    let keys = secret
        .data
        .iter()
        .flat_map(|d| d.iter().map(|(k, v)| (k, v.0.len())))
        .chain(
            secret
                .string_data
                .iter()
                .flat_map(|d| d.iter().map(|(k, v)| (k, v.len()))),
        );
    for (k, len) in keys {
        total += len;
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && k != "."
            && k != ".."
            && !k.starts_with("..");
        if !ok {
            causes.push(Cause::invalid(
                format!("data[{k}]"),
                &Value::String(k.clone()),
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
    if total > 1024 * 1024 {
        causes.push(Cause {
            field: "data".into(),
            reason: "FieldValueTooLong",
            message: "Too long: must have at most 1048576 bytes".into(),
        });
    }
    causes
}

/// The defaults the apiserver (and its default admission plugins) fill into a new pod.
pub(crate) fn default_pod(pod: &mut Pod) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context.get_or_insert_with(Default::default);
    let sa = spec
        .service_account_name
        .clone()
        .or_else(|| spec.service_account.clone())
        .unwrap_or_else(|| "default".into());
    spec.service_account_name = Some(sa.clone());
    spec.service_account = Some(sa);
    spec.enable_service_links.get_or_insert(true);
    spec.priority.get_or_insert(0);
    spec.preemption_policy
        .get_or_insert_with(|| "PreemptLowerPriority".into());
    // DefaultTolerationSeconds admission.
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if !tolerations.iter().any(|t| t.key.as_deref() == Some(key)) {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(300),
                value: None,
            });
        }
    }
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(s) = v.secret.as_mut() {
            s.default_mode.get_or_insert(420);
        }
        if let Some(t) = v
            .ephemeral
            .as_mut()
            .and_then(|e| e.volume_claim_template.as_mut())
        {
            t.spec
                .volume_mode
                .get_or_insert_with(|| "Filesystem".into());
        }
    }
    let inits = spec.init_containers.iter_mut().flatten();
    for c in inits.chain(spec.containers.iter_mut()) {
        default_container(c);
    }
}

fn default_container(c: &mut Container) {
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy
        .get_or_insert_with(|| "File".into());
    if c.image_pull_policy.is_none() {
        let image = c.image.clone().unwrap_or_default();
        let last = image.rsplit('/').next().unwrap_or("");
        let latest = !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"));
        c.image_pull_policy = Some(if latest { "Always" } else { "IfNotPresent" }.into());
    }
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    // Requests default to limits where only the limit is given.
    if let Some(r) = c.resources.as_mut()
        && let Some(limits) = r.limits.clone()
    {
        let requests = r.requests.get_or_insert_with(BTreeMap::new);
        for (k, v) in limits {
            requests.entry(k).or_insert(v);
        }
    }
    for p in [
        c.liveness_probe.as_mut(),
        c.readiness_probe.as_mut(),
        c.startup_probe.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        p.period_seconds.get_or_insert(10);
        p.timeout_seconds.get_or_insert(1);
        p.success_threshold.get_or_insert(1);
        p.failure_threshold.get_or_insert(3);
        if let Some(h) = p.http_get.as_mut() {
            h.path.get_or_insert_with(|| "/".into());
            h.scheme.get_or_insert_with(|| "HTTP".into());
        }
    }
    for e in c.env.iter_mut().flatten() {
        if let Some(f) = e.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            f.api_version.get_or_insert_with(|| "v1".into());
        }
    }
}

/// The pod's QoS class, as the apiserver computes it at creation.
pub(crate) fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let all: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.as_ref();
        let req = r.and_then(|r| r.requests.as_ref());
        let lim = r.and_then(|r| r.limits.as_ref());
        for res in ["cpu", "memory"] {
            let q = req.and_then(|m| m.get(res));
            let l = lim.and_then(|m| m.get(res));
            if q.is_some() || l.is_some() {
                any = true;
            }
            match (q, l) {
                (Some(q), Some(l)) if quantity::parse(&q.0) == quantity::parse(&l.0) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

pub(crate) fn default_pvc(pvc: &mut PersistentVolumeClaim, storage_class: Option<&str>) {
    if let Some(spec) = pvc.spec.as_mut() {
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
        if spec.storage_class_name.is_none()
            && let Some(sc) = storage_class
        {
            spec.storage_class_name = Some(sc.into());
        }
    }
}

/// `stringData` is write-only: merged into `data` (winning over it) and dropped.
pub(crate) fn default_secret(secret: &mut Secret) {
    secret.type_.get_or_insert_with(|| "Opaque".into());
    if let Some(sd) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (k, v) in sd {
            data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(input: Value, expected: Result<(), &str>) {
        let got = strict::<Pod>("Pod", &input)
            .map(|_| ())
            .map_err(|e| e.message);
        match expected {
            Ok(()) => assert!(got.is_ok(), "{input}: {got:?}"),
            Err(want) => assert_eq!(got.err().as_deref(), Some(want), "{input}"),
        }
    }

    #[test]
    fn strict_decoding() {
        let base = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "x", "env": [], "resources": {}}]}});
        check(base.clone(), Ok(()));
        let mut v = base.clone();
        v["spec"]["foo"] = json!(1);
        check(v, Err("strict decoding error: unknown field \"spec.foo\""));
        let mut v = base.clone();
        v["spec"]["containers"][0]["imag"] = json!("x");
        v["bar"] = json!({"x": 1});
        check(
            v,
            Err(
                "strict decoding error: unknown field \"bar\", unknown field \"spec.containers[0].imag\"",
            ),
        );
        let mut v = base.clone();
        v["spec"]["foo"] = json!(null);
        check(v, Ok(()));
        let mut v = base.clone();
        v["spec"]["containers"] = json!("nope");
        assert!(strict::<Pod>("Pod", &v).err().is_some_and(|e| {
            e.message
                .starts_with("Pod in version \"v1\" cannot be handled as a Pod")
        }));
        let mut v = base;
        v["kind"] = json!("Secret");
        assert!(strict::<Pod>("Pod", &v).is_err());
    }

    #[test]
    fn pod_rules() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {
                "volumes": [{"name": "w", "emptyDir": {}}, {"name": "w", "emptyDir": {}}],
                "initContainers": [{"name": "i", "image": "x", "restartPolicy": "Never"}],
                "containers": [{"name": "i", "volumeMounts": [{"name": "nope", "mountPath": "/x"}],
                    "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}]}}))
        .expect("decodes");
        let causes = check_pod(&pod, "p").expect("quantities parse");
        let fields: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.volumes[1].name: Duplicate value: \"w\"",
                "spec.initContainers[0].restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
                "spec.containers[0].name: Duplicate value: \"i\"",
                "spec.containers[0].image: Required value",
                "spec.containers[0].volumeMounts[0].name: Not found: \"nope\"",
                "spec.containers[0].resources.requests: Invalid value: \"2Gi\": must be less than or equal to memory limit of 1Gi",
            ]
        );
        let e = ApiError::invalid("Pod", "p", causes);
        assert_eq!(e.code, 422);
        assert!(
            e.message
                .starts_with("Pod \"p\" is invalid: [spec.volumes[1].name")
        );
    }

    #[test]
    fn defaults() {
        let mut pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "busybox",
                "resources": {"limits": {"memory": "64Mi"}}}]}}))
        .expect("decodes");
        default_pod(&mut pod);
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        let c = &spec.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(
            c.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("memory")),
            Some(&Quantity("64Mi".into()))
        );
        assert_eq!(qos_class(&pod), "Burstable");
    }
}
