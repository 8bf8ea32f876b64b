//! Image references and registry credentials from the runner's Docker client config file
//! (`auths` entries only: `credsStore` and `credHelpers` programs are not run).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

use crate::error::DockerError;

/// Docker Hub's key in `auths`, as `docker login` writes it.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// An image reference split the way the engine's pull call wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host (`docker.io` when the reference names none).
    pub registry: String,
    /// What to pass as `fromImage`: the reference with its tag or digest.
    pub from_image: String,
    /// What to pass as `tag`: `latest` when the reference has neither tag nor digest (otherwise the
    /// engine would pull every tag).
    pub tag: Option<String>,
}

impl ImageRef {
    pub fn parse(reference: &str) -> Self {
        let (first, rest) = match reference.split_once('/') {
            Some((f, r)) => (f, Some(r)),
            None => (reference, None),
        };
        let registry = match rest {
            Some(_) if first.contains('.') || first.contains(':') || first == "localhost" => {
                first.to_owned()
            }
            _ => "docker.io".to_owned(),
        };
        let last = reference.rsplit('/').next().unwrap_or(reference);
        let has_tag_or_digest = reference.contains('@') || last.contains(':');
        Self {
            registry,
            from_image: reference.to_owned(),
            tag: (!has_tag_or_digest).then(|| "latest".to_owned()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct ClientConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The default location of the Docker client config: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`.
pub fn default_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// `registry.example.com`, `https://registry.example.com/v2/` and `index.docker.io` all name a
/// registry; this reduces them to the host (Docker Hub's aliases to `docker.io`).
fn normalize_registry(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        h => h.to_owned(),
    }
}

/// Credentials for `registry` from the config file's text.
pub fn credentials_from_json(
    text: &str,
    path: &Path,
    registry: &str,
) -> Result<Option<DockerCredentials>, DockerError> {
    let bad = |message: String| DockerError::Credentials {
        path: path.to_owned(),
        message,
    };
    let config: ClientConfig =
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let wanted = normalize_registry(registry);
    let Some((key, entry)) = config
        .auths
        .iter()
        .find(|(k, _)| normalize_registry(k) == wanted)
    else {
        return Ok(None);
    };
    let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| bad(format!("`auth` of `{key}` is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| bad(format!("`auth` of `{key}` is not UTF-8")))?;
        let (u, p) = decoded
            .split_once(':')
            .ok_or_else(|| bad(format!("`auth` of `{key}` is not `user:password`")))?;
        username = Some(u.to_owned());
        password = Some(p.to_owned());
    }
    let serveraddress = if wanted == "docker.io" {
        DOCKER_HUB_AUTH_KEY.to_owned()
    } else {
        wanted
    };
    Ok(Some(DockerCredentials {
        username,
        password,
        identitytoken: entry.identitytoken.clone(),
        serveraddress: Some(serveraddress),
        ..DockerCredentials::default()
    }))
}

/// Reads the config file at `path` (a missing file means no credentials).
pub async fn credentials_for(
    path: Option<&Path>,
    registry: &str,
) -> Result<Option<DockerCredentials>, DockerError> {
    let Some(path) = path else { return Ok(None) };
    match tokio::fs::read_to_string(path).await {
        Ok(text) => credentials_from_json(&text, path, registry),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DockerError::Credentials {
            path: path.to_owned(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_ref(reference: &str, registry: &str, tag: Option<&str>) {
        let r = ImageRef::parse(reference);
        assert_eq!(r.registry, registry, "{reference}");
        assert_eq!(r.tag.as_deref(), tag, "{reference}");
        assert_eq!(r.from_image, reference);
    }

    #[test]
    fn image_references() {
        check_ref("alpine", "docker.io", Some("latest"));
        check_ref("alpine:3.20", "docker.io", None);
        check_ref("library/alpine", "docker.io", Some("latest"));
        check_ref(
            "registry.example.com/team/app",
            "registry.example.com",
            Some("latest"),
        );
        check_ref("localhost:5000/app:1", "localhost:5000", None);
        check_ref("localhost/app", "localhost", Some("latest"));
        check_ref("ghcr.io/o/app@sha256:abcd", "ghcr.io", None);
    }

    #[test]
    fn credentials_from_auths() {
        let path = Path::new("/x/config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let text = format!(
            r#"{{"auths": {{"https://registry.example.com/v2/": {{"auth": "{auth}"}},
                 "https://index.docker.io/v1/": {{"username": "bob", "password": "pw"}}}},
                "credsStore": "desktop"}}"#
        );
        let c = credentials_from_json(&text, path, "registry.example.com")
            .expect("valid")
            .expect("found");
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.password.as_deref(), Some("s3cr:et"));
        let hub = credentials_from_json(&text, path, "docker.io")
            .expect("valid")
            .expect("found");
        assert_eq!(hub.username.as_deref(), Some("bob"));
        assert_eq!(hub.serveraddress.as_deref(), Some(DOCKER_HUB_AUTH_KEY));
        assert!(
            credentials_from_json(&text, path, "other.example.com")
                .expect("valid")
                .is_none()
        );
        let err = credentials_from_json(r#"{"auths": {"r.io": {"auth": "%%"}}}"#, path, "r.io")
            .expect_err("bad base64");
        assert!(err.to_string().contains("/x/config.json"), "{err}");
    }
}
