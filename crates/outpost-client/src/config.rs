//! The client's configuration: typed, `deny_unknown_fields`, with every default in one place
//! ([`defaults`]) so that the agent's config file and `--print-config` show the same values.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The documented default values of [`ClientConfig`] and [`RetryPolicy`].
pub mod defaults {
    use std::time::Duration;

    /// Whether `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (and their lowercase
    /// forms) are honoured when the config names no proxy.
    pub const USE_ENV_PROXY: bool = true;
    /// Longest time to open a connection: TCP, proxy `CONNECT` and TLS handshake together.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Longest time for one attempt of a call, from sending to the last byte of the answer. A
    /// long-poll (acquire, heartbeat) gets `wait_s` on top of it.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    /// Most attempts of one call, the first included (`0`: no limit).
    pub const MAX_ATTEMPTS: u32 = 8;
    /// Longest time one call keeps retrying, from its first attempt (`0`: no limit).
    pub const MAX_ELAPSED: Duration = Duration::from_secs(120);
    /// The backoff before the first retry is drawn from `[0, BASE_DELAY]`.
    pub const BASE_DELAY: Duration = Duration::from_millis(200);
    /// The backoff never exceeds this (full jitter of `min(MAX_DELAY, BASE_DELAY * 2^n)`).
    pub const MAX_DELAY: Duration = Duration::from_secs(15);
    /// The `User-Agent` header.
    pub const USER_AGENT: &str = concat!("outpost-client/", env!("CARGO_PKG_VERSION"));
}

/// How a [`crate::HubClient`] reaches the hub.
///
/// Durations are written as humantime strings (`"10s"`, `"500ms"`, `"2m"`) or as a number of
/// seconds (`10`, `0.5`). Relative file paths are taken as they are (relative to the process's
/// working directory); the agent resolves them against its config file before it gets here.
///
/// Proxy selection, for the hub's URL:
/// 1. `proxy`, when set, is used for `http` and `https` hubs alike;
/// 2. else, when `use_env_proxy`, `HTTPS_PROXY` (https hub) or `HTTP_PROXY` (http hub), then
///    `ALL_PROXY`, each in upper then lower case;
/// 3. the proxy is bypassed when the hub's host matches `no_proxy`, or, when that is unset and
///    `use_env_proxy`, `NO_PROXY`/`no_proxy` (curl's rules: comma-separated domains, which match
///    their subdomains too, IP addresses and CIDR ranges, `*` for all).
///
/// An `https` hub is reached through the proxy with a `CONNECT` tunnel (TLS end to end); an
/// `http` hub with absolute-form requests (`GET http://hub/...`), as curl does. The proxy
/// itself is spoken to in plain HTTP (`http://` proxy URLs; no scheme means `http://`); basic
/// auth comes from the URL's userinfo (`http://user:pass@proxy:3128`, percent-encoded).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The hub's URL, `https://hub.example.com` or `http://127.0.0.1:8080`; a path prefix is
    /// kept (`https://example.com/outpost`).
    pub base_url: String,
    /// The bearer token: a runner token on the runner side, an org API key or the admin key on
    /// the admin side. Usually filled in from a token file or the environment rather than
    /// written in the config file; never serialized (so `--print-config` does not show it).
    #[serde(default, skip_serializing)]
    pub token: String,
    /// A PEM bundle of CA certificates that replaces the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain) for mutual TLS; needs `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// A proxy URL for every request, `http://[user:pass@]host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Hosts that bypass the proxy, curl's `NO_PROXY` syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_proxy: Option<String>,
    /// Honour the proxy environment variables (default `true`).
    #[serde(default = "default_use_env_proxy")]
    pub use_env_proxy: bool,
    /// Default `10s`.
    #[serde(
        default = "default_connect_timeout",
        with = "outpost_time::serde_duration"
    )]
    pub connect_timeout: Duration,
    /// Default `30s`.
    #[serde(
        default = "default_request_timeout",
        with = "outpost_time::serde_duration"
    )]
    pub request_timeout: Duration,
    /// When and how often a failed call is tried again.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Default `outpost-client/<version>`.
    #[serde(default = "default_user_agent")]
    pub user_agent: String,
}

impl ClientConfig {
    /// A config with the default values for everything but the hub's URL and the token.
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            token: token.into(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            proxy: None,
            no_proxy: None,
            use_env_proxy: defaults::USE_ENV_PROXY,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            request_timeout: defaults::REQUEST_TIMEOUT,
            retry: RetryPolicy::default(),
            user_agent: defaults::USER_AGENT.to_owned(),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field(
                "token",
                &if self.token.is_empty() {
                    "<empty>"
                } else {
                    "<redacted>"
                },
            )
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("proxy", &self.proxy.as_deref().map(redact_userinfo))
            .field("no_proxy", &self.no_proxy)
            .field("use_env_proxy", &self.use_env_proxy)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// A proxy URL with its password (if any) hidden, for logs and errors.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let redacted = match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{user}:***@{host}{}", &rest[authority_end..])
        }
        None => rest.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{redacted}"),
        None => redacted,
    }
}

/// When a failed call is tried again: exponential backoff with full jitter (the sleep before
/// retry `n` is drawn uniformly from `[0, min(max_delay, base_delay * 2^n)]`), or the hub's
/// `Retry-After` on a 429/503, until `max_attempts` or `max_elapsed` is reached.
///
/// Retried: connection errors, timeouts, 408, 429 and 5xx answers. Never retried: 401 and other
/// 4xx answers. Calls that create something (create org, create token, submit job) are retried
/// only after errors that prove the request never left (the connection could not be opened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Most attempts, the first included; `1` never retries, `0` means no limit. Default `8`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Longest time from the first attempt after which no retry starts; `0` means no limit.
    /// Default `2m`. A `Retry-After` that would end past it ends the call at once.
    #[serde(default = "default_max_elapsed", with = "outpost_time::serde_duration")]
    pub max_elapsed: Duration,
    /// Default `200ms`.
    #[serde(default = "default_base_delay", with = "outpost_time::serde_duration")]
    pub base_delay: Duration,
    /// Default `15s`.
    #[serde(default = "default_max_delay", with = "outpost_time::serde_duration")]
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// A policy that tries each call once.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: defaults::MAX_ATTEMPTS,
            max_elapsed: defaults::MAX_ELAPSED,
            base_delay: defaults::BASE_DELAY,
            max_delay: defaults::MAX_DELAY,
        }
    }
}

fn default_use_env_proxy() -> bool {
    defaults::USE_ENV_PROXY
}
fn default_connect_timeout() -> Duration {
    defaults::CONNECT_TIMEOUT
}
fn default_request_timeout() -> Duration {
    defaults::REQUEST_TIMEOUT
}
fn default_user_agent() -> String {
    defaults::USER_AGENT.to_owned()
}
fn default_max_attempts() -> u32 {
    defaults::MAX_ATTEMPTS
}
fn default_max_elapsed() -> Duration {
    defaults::MAX_ELAPSED
}
fn default_base_delay() -> Duration {
    defaults::BASE_DELAY
}
fn default_max_delay() -> Duration {
    defaults::MAX_DELAY
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ClientConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_fill_everything_but_the_url() {
        let config = parse(r#"{"base_url": "https://hub"}"#).expect("valid");
        assert_eq!(config, ClientConfig::new("https://hub", ""));
        assert_eq!(config.retry.max_attempts, defaults::MAX_ATTEMPTS);
        assert!(config.use_env_proxy);
    }

    #[test]
    fn durations_are_humantime_or_seconds() {
        let check = |value: &str, expected: Duration| {
            let json = format!(r#"{{"base_url": "x", "connect_timeout": {value}}}"#);
            assert_eq!(
                parse(&json).expect(value).connect_timeout,
                expected,
                "{value}"
            );
        };
        check(r#""1m 30s""#, Duration::from_secs(90));
        check(r#""250ms""#, Duration::from_millis(250));
        check("7", Duration::from_secs(7));
        check("0.5", Duration::from_millis(500));
        check(r#""2""#, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_name_themselves() {
        let err = parse(r#"{"base_url": "x", "request_timeout": "soon"}"#).unwrap_err();
        assert!(err.contains("invalid duration `soon`"), "{err}");
        let err = parse(r#"{"base_url": "x", "retry": {"max_tries": 3}}"#).unwrap_err();
        assert!(err.contains("max_tries"), "{err}");
        let err = parse(r#"{"base_url": "x", "connect_timeout": -1}"#).unwrap_err();
        assert!(err.contains("negative"), "{err}");
    }

    #[test]
    fn serializing_hides_the_token_and_round_trips_the_rest() {
        let mut config = ClientConfig::new("https://hub", "secret-token");
        config.proxy = Some("http://proxy:3128".into());
        let json = serde_json::to_string(&config).expect("serializes");
        assert!(!json.contains("secret-token"), "{json}");
        assert!(json.contains(r#""connect_timeout":"10s""#), "{json}");
        let back: ClientConfig = serde_json::from_str(&json).expect("round trip");
        assert_eq!(
            back,
            ClientConfig {
                token: String::new(),
                ..config
            }
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut config = ClientConfig::new("https://hub", "secret-token");
        config.proxy = Some("http://alice:hunter2@proxy:3128".into());
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("secret-token") && !debug.contains("hunter2"),
            "{debug}"
        );
        assert!(debug.contains("alice:***@proxy:3128"), "{debug}");
    }

    #[test]
    fn redact_userinfo_cases() {
        let check = |input: &str, expected: &str| assert_eq!(redact_userinfo(input), expected);
        check("http://proxy:3128", "http://proxy:3128");
        check("http://u:p@proxy:3128/", "http://u:***@proxy:3128/");
        check("u@proxy", "u:***@proxy");
        check("proxy:3128", "proxy:3128");
    }
}
