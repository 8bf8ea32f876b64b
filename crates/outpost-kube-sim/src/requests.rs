//! The request log: every API call as the authorizer sees it (verb, resource, subresource,
//! namespace, name), so that a test can compare the verbs used with an RBAC Role and the bench
//! can count what a job costs.

use axum::http::Method;

/// One API request as Kubernetes' request-info resolver classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`; for a
    /// non-resource path the lowercase HTTP method. A WebSocket `pods/attach` is a `get` (the
    /// 1.33 rule; later versions also require `create`).
    pub verb: String,
    /// `pods`, `persistentvolumeclaims`, …; empty for a non-resource path (`/version`).
    pub resource: String,
    /// `log`, `attach`, `status`, …
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The HTTP method and path, as sent.
    pub method: String,
    pub path: String,
    /// The HTTP status answered (for a watch or a follow: the status the stream began with).
    pub status: u16,
}

impl ApiRequest {
    /// `resource` or `resource/subresource`, as an RBAC rule names it.
    pub fn rbac_resource(&self) -> String {
        match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        }
    }
}

/// The parts of a resource path: `/api/v1[/namespaces/{ns}]/{resource}[/{name}[/{sub}]]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PathInfo {
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

pub(crate) fn parse_path(path: &str) -> Option<PathInfo> {
    let rest = path.strip_prefix("/api/v1/")?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let (namespace, parts) = match parts.as_slice() {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => {
            (Some((*ns).to_owned()), tail.to_vec())
        }
        ["namespaces", ns] => {
            return Some(PathInfo {
                namespace: None,
                resource: "namespaces".into(),
                name: Some((*ns).to_owned()),
                subresource: None,
            });
        }
        _ => (None, parts),
    };
    let mut it = parts.into_iter();
    let resource = it.next()?.to_owned();
    let name = it.next().map(str::to_owned);
    let subresource = it.next().map(str::to_owned);
    if it.next().is_some() {
        return None;
    }
    Some(PathInfo {
        namespace,
        resource,
        name,
        subresource,
    })
}

pub(crate) fn classify(
    method: &Method,
    path: &str,
    query: Option<&str>,
    status: u16,
) -> ApiRequest {
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1" || kv == "watch")
    });
    let base = |verb: String, info: PathInfo| ApiRequest {
        verb,
        resource: info.resource,
        subresource: info.subresource,
        namespace: info.namespace,
        name: info.name,
        method: method.to_string(),
        path: path.to_owned(),
        status,
    };
    match parse_path(path) {
        Some(info) => {
            let verb = match *method {
                Method::GET | Method::HEAD if info.name.is_none() && watch => "watch",
                Method::GET | Method::HEAD if info.name.is_none() => "list",
                Method::GET | Method::HEAD => "get",
                Method::POST => "create",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE if info.name.is_none() => "deletecollection",
                Method::DELETE => "delete",
                _ => "",
            };
            let verb = if verb.is_empty() {
                method.as_str().to_lowercase()
            } else {
                verb.to_owned()
            };
            base(verb, info)
        }
        None => base(method.as_str().to_lowercase(), PathInfo::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        method: Method,
        path: &str,
        query: Option<&str>,
        expected: (&str, &str, Option<&str>, Option<&str>, Option<&str>),
    ) {
        let r = classify(&method, path, query, 200);
        assert_eq!(
            (
                r.verb.as_str(),
                r.resource.as_str(),
                r.subresource.as_deref(),
                r.namespace.as_deref(),
                r.name.as_deref()
            ),
            expected,
            "{method} {path}"
        );
    }

    #[test]
    fn request_info() {
        check(
            Method::GET,
            "/api/v1/namespaces/ci/pods",
            None,
            ("list", "pods", None, Some("ci"), None),
        );
        check(
            Method::GET,
            "/api/v1/namespaces/ci/pods",
            Some("watch=true&x=1"),
            ("watch", "pods", None, Some("ci"), None),
        );
        check(
            Method::GET,
            "/api/v1/namespaces/ci/pods/p/log",
            Some("follow=true"),
            ("get", "pods", Some("log"), Some("ci"), Some("p")),
        );
        check(
            Method::GET,
            "/api/v1/namespaces/ci/pods/p/attach",
            None,
            ("get", "pods", Some("attach"), Some("ci"), Some("p")),
        );
        check(
            Method::POST,
            "/api/v1/namespaces/ci/secrets",
            None,
            ("create", "secrets", None, Some("ci"), None),
        );
        check(
            Method::PUT,
            "/api/v1/namespaces/ci/persistentvolumeclaims/c",
            None,
            (
                "update",
                "persistentvolumeclaims",
                None,
                Some("ci"),
                Some("c"),
            ),
        );
        check(
            Method::PATCH,
            "/api/v1/namespaces/ci/persistentvolumeclaims/c",
            None,
            (
                "patch",
                "persistentvolumeclaims",
                None,
                Some("ci"),
                Some("c"),
            ),
        );
        check(
            Method::DELETE,
            "/api/v1/namespaces/ci/pods/p",
            None,
            ("delete", "pods", None, Some("ci"), Some("p")),
        );
        check(
            Method::GET,
            "/api/v1/pods",
            None,
            ("list", "pods", None, None, None),
        );
        check(Method::GET, "/version", None, ("get", "", None, None, None));
    }
}
