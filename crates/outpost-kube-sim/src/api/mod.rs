//! The HTTP face: the Kubernetes REST paths of the served resources, bearer-token
//! authentication, the request log, and the few discovery documents clients ask for.

mod attach;
mod logs;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;
use serde_json::{Value, json};

use crate::cluster::{Cluster, Deleted, lock};
use crate::error::ApiError;
use crate::requests::{classify, parse_path};
use crate::store::Resource;
use crate::validate;

pub(crate) fn router(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/attach",
            any(attach::attach),
        )
        .route("/version", get(version))
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .route("/livez", get(ok))
        .route("/api", get(api_versions))
        .route("/apis", get(api_groups))
        .route("/api/v1", get(api_resources))
        .fallback(resources)
        .layer(axum::middleware::from_fn_with_state(cluster.clone(), gate))
        // The apiserver's request body limit.
        .layer(DefaultBodyLimit::max(3 * 1024 * 1024))
        .with_state(cluster)
}

/// Authentication and the request log.
async fn gate(State(c): State<Arc<Cluster>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // As the apiserver's public-info-viewer role: version and health need no credentials.
    let public = matches!(
        path.as_str(),
        "/version" | "/healthz" | "/readyz" | "/livez"
    );
    let resp = if public || token == Some(c.cfg.token.as_str()) {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    };
    let entry = classify(&method, &path, query.as_deref(), resp.status().as_u16());
    lock(&c.requests).push(entry);
    resp
}

pub(crate) fn query_map(uri: &Uri) -> HashMap<String, String> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0.into_iter().collect())
        .unwrap_or_default()
}

/// Go's `strconv.ParseBool`, as query parameters are read.
pub(crate) fn flag(q: &HashMap<String, String>, key: &str) -> Result<bool, ApiError> {
    match q.get(key).map(String::as_str) {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "strconv.ParseBool: parsing {other:?}: invalid syntax"
        ))),
    }
}

pub(crate) fn number(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ApiError> {
    match q.get(key).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("strconv.ParseInt: parsing {s:?}: invalid syntax"))
        }),
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, axum::Json(v)).into_response()
}

fn body_json(headers: &HeaderMap, body: &Bytes, patch: bool) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = ct.split(';').next().unwrap_or("").trim();
    let ok = if patch {
        media == "application/merge-patch+json"
    } else {
        media == "application/json" || media.is_empty()
    };
    if !ok {
        return Err(ApiError::unsupported_media_type(ct));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("the body of the request was empty"));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

/// Every resource path.
async fn resources(
    State(c): State<Arc<Cluster>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match dispatch(&c, &method, &uri, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(
    c: &Arc<Cluster>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let not_found = || ApiError {
        code: 404,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
        details: None,
    };
    let info = parse_path(uri.path()).ok_or_else(not_found)?;
    let q = query_map(uri);
    if info.resource == "namespaces" {
        let ns = info.name.clone().unwrap_or_default();
        if *method != Method::GET {
            return Err(unsupported("namespaces", method));
        }
        c.check_namespace(&ns)?;
        return Ok(json_response(
            StatusCode::OK,
            &json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": ns},
                    "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
        ));
    }
    let r = Resource::from_plural(&info.resource).ok_or_else(not_found)?;
    let ns = info.namespace.clone();
    let name = info.name.clone();
    let sub = info.subresource.as_deref();
    match (method.clone(), ns, name, sub) {
        (Method::GET, ns, None, None) => {
            if let Some(ns) = &ns {
                c.check_namespace(ns)?;
            }
            let params = watch::ListParams::parse(&q, r)?;
            if params.watch {
                Ok(watch::watch(c.clone(), r, ns, params))
            } else {
                let list = watch::list(c, r, ns.as_deref(), &params)?;
                Ok(json_response(StatusCode::OK, &list))
            }
        }
        (Method::GET, Some(ns), Some(name), None | Some("status")) => {
            let v = c.get(r, &ns, &name)?;
            Ok(json_response(StatusCode::OK, &v))
        }
        (Method::GET, Some(ns), Some(name), Some("log")) if r == Resource::Pods => {
            logs::logs(c, &ns, &name, &q).await
        }
        (Method::POST, Some(ns), None, None) if r != Resource::Events => {
            let v = body_json(headers, body, false)?;
            let dry = q.get("dryRun").is_some_and(|d| !d.is_empty());
            let created = c.create(r, &ns, &v, dry)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Method::PUT, Some(ns), Some(name), None) if r == Resource::PersistentVolumeClaims => {
            let v = body_json(headers, body, false)?;
            let updated = c.update_claim(&ns, &name, &v)?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        (Method::PATCH, Some(ns), Some(name), None) if r == Resource::PersistentVolumeClaims => {
            let v = body_json(headers, body, true)?;
            let patched = c.merge_patch_claim(&ns, &name, &v)?;
            Ok(json_response(StatusCode::OK, &patched))
        }
        (Method::DELETE, Some(ns), Some(name), None) if r != Resource::Events => {
            let opts = delete_options(headers, body, &q)?;
            match c.delete(r, &ns, &name, &opts)? {
                Deleted::Object(v) => Ok(json_response(StatusCode::OK, &v)),
                Deleted::Status(v) => Ok(json_response(StatusCode::OK, &v)),
            }
        }
        (m, _, _, _) => Err(unsupported(&info.resource, &m)),
    }
}

fn unsupported(resource: &str, m: &Method) -> ApiError {
    ApiError::method_not_allowed(format!(
        "the server does not allow this method on the requested resource (outpost-kube-sim serves no {m} on {resource} here)"
    ))
}

/// `DeleteOptions` from the body (strictly decoded) and the query (which wins).
fn delete_options(
    headers: &HeaderMap,
    body: &Bytes,
    q: &HashMap<String, String>,
) -> Result<DeleteOptions, ApiError> {
    let mut opts: DeleteOptions = if body.is_empty() {
        DeleteOptions::default()
    } else {
        let v = body_json(headers, body, false)?;
        validate::strict("DeleteOptions", &v)?
    };
    if let Some(g) = number(q, "gracePeriodSeconds")? {
        opts.grace_period_seconds = Some(g);
    }
    if let Some(p) = q.get("propagationPolicy") {
        opts.propagation_policy = Some(p.clone());
    }
    if q.contains_key("orphanDependents") {
        opts.orphan_dependents = Some(flag(q, "orphanDependents")?);
    }
    if let Some(d) = q.get("dryRun") {
        opts.dry_run = Some(vec![d.clone()]);
    }
    Ok(opts)
}

async fn ok() -> &'static str {
    "ok"
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1", "minor": "33",
            "emulationMajor": "1", "emulationMinor": "33",
            "minCompatibilityMajor": "1", "minCompatibilityMinor": "32",
            "gitVersion": "v1.33.0-outpost-kube-sim", "gitCommit": "", "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
            "platform": "linux/amd64",
        }),
    )
}

async fn api_versions() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
    )
}

async fn api_groups() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
    )
}

async fn api_resources() -> Response {
    let res = |name: &str, kind: &str, verbs: &[&str]| json!({"name": name, "singularName": "", "namespaced": true, "kind": kind, "verbs": verbs});
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList", "groupVersion": "v1",
            "resources": [
                res("pods", "Pod", &["create", "delete", "get", "list", "watch"]),
                res("pods/log", "Pod", &["get"]),
                res("pods/attach", "PodAttachOptions", &["create", "get"]),
                res("persistentvolumeclaims", "PersistentVolumeClaim",
                    &["create", "delete", "get", "list", "patch", "update", "watch"]),
                res("secrets", "Secret", &["create", "delete", "get", "list", "watch"]),
                res("events", "Event", &["get", "list", "watch"]),
            ],
        }),
    )
}

/// A streaming body from a byte stream.
pub(crate) fn stream_body<S>(s: S, content_type: &'static str) -> Response
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(s))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
