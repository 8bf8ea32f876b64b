//! The client's error type: every variant names the endpoint (`POST /api/v1/runner/acquire`)
//! or, for configuration errors, the setting at fault.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::StatusCode;
use outpost_protocol::{ErrorBody, ErrorCode};

/// A boxed error from the transport (connector, TLS, proxy, hyper).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong with a hub call, or with building the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub refused the credential (401): the token is revoked, unknown or malformed. A runner
    /// stops taking work on this; it is never retried.
    #[error("{endpoint}: token revoked or invalid")]
    Unauthorized {
        /// Method and path of the call, e.g. `POST /api/v1/runner/acquire`.
        endpoint: String,
    },
    /// The hub answered with an error status; `body` is the decoded error body, or one made up
    /// from the status and the raw text when the answer was not the protocol's JSON.
    #[error("{endpoint}: {status}: {body}")]
    Api {
        /// Method and path of the call.
        endpoint: String,
        /// The HTTP status of the answer.
        status: StatusCode,
        /// The error as the hub described it.
        body: ErrorBody,
    },
    /// The request could not be sent or the answer not received: DNS, connect, proxy, TLS, or
    /// the connection broke.
    #[error("{endpoint}: {}", Chain(&**.source))]
    Transport {
        /// Method and path of the call.
        endpoint: String,
        /// The underlying error, with its own chain of causes.
        source: BoxError,
    },
    /// No complete answer arrived within the call's timeout.
    #[error("{endpoint}: no answer within {}", outpost_time::format(*.after))]
    Timeout {
        /// Method and path of the call.
        endpoint: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// A successful answer's body is not what the protocol says it is.
    #[error("{endpoint}: cannot decode the answer: {source}")]
    Decode {
        /// Method and path of the call.
        endpoint: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The client's configuration is invalid (a bad URL, CA file, certificate, key or proxy).
    #[error("invalid client configuration: {what}: {reason}")]
    Config {
        /// The setting or file at fault, e.g. `ca_file /etc/outpost/ca.pem` or `HTTPS_PROXY`.
        what: String,
        /// Why it is invalid.
        reason: String,
    },
}

impl ClientError {
    /// Whether trying the same call again may succeed: transport errors, timeouts and 408, 429
    /// and 5xx answers. The client already retried these as far as its [`crate::RetryPolicy`]
    /// allows; this tells a caller with a longer horizon (an outbox) to keep the work.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout { .. } => true,
            Self::Api { status, .. } => is_retryable_status(*status),
            Self::Unauthorized { .. } | Self::Decode { .. } | Self::Config { .. } => false,
        }
    }

    /// The endpoint of the call, when the error comes from one.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Self::Unauthorized { endpoint }
            | Self::Api { endpoint, .. }
            | Self::Transport { endpoint, .. }
            | Self::Timeout { endpoint, .. }
            | Self::Decode { endpoint, .. } => Some(endpoint),
            Self::Config { .. } => None,
        }
    }

    /// The protocol error code of an [`ClientError::Api`] error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { body, .. } => Some(body.error.code),
            _ => None,
        }
    }

    pub(crate) fn config(what: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self::Config {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// 408, 429 and every 5xx.
pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// An error body for an answer that did not carry the protocol's JSON error.
pub(crate) fn synthesize_body(status: StatusCode, raw: &[u8]) -> ErrorBody {
    let code = match status.as_u16() {
        400 => ErrorCode::BadRequest,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        413 => ErrorCode::PayloadTooLarge,
        422 => ErrorCode::Unprocessable,
        429 => ErrorCode::RateLimited,
        500 => ErrorCode::Internal,
        503 => ErrorCode::Unavailable,
        _ => ErrorCode::Other,
    };
    const MAX_TEXT: usize = 512;
    let text = String::from_utf8_lossy(&raw[..raw.len().min(MAX_TEXT)]);
    let text = text.trim();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_owned()
    } else if raw.len() > MAX_TEXT {
        format!("{text}…")
    } else {
        text.to_owned()
    };
    ErrorBody::new(code, message)
}

/// Displays an error and its causes as `a: b: c`, skipping hyper-util's bare "client error
/// (Connect)" style wrappers that say nothing their cause does not.
struct Chain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut current = Some(self.0);
        while let Some(err) = current {
            let text = err.to_string();
            let next = err.source();
            let opaque = text.starts_with("client error (") && next.is_some();
            if !opaque {
                if !first {
                    f.write_str(": ")?;
                }
                f.write_str(&text)?;
                first = false;
            }
            current = next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_endpoint() {
        let endpoint = "POST /api/v1/runner/acquire".to_owned();
        let err = ClientError::Unauthorized {
            endpoint: endpoint.clone(),
        };
        assert_eq!(
            err.to_string(),
            "POST /api/v1/runner/acquire: token revoked or invalid"
        );
        let err = ClientError::Timeout {
            endpoint: endpoint.clone(),
            after: Duration::from_secs(40),
        };
        assert_eq!(
            err.to_string(),
            "POST /api/v1/runner/acquire: no answer within 40s"
        );
        let err = ClientError::Api {
            endpoint,
            status: StatusCode::CONFLICT,
            body: ErrorBody::new(ErrorCode::AlreadyExists, "org `acme` exists"),
        };
        assert_eq!(
            err.to_string(),
            "POST /api/v1/runner/acquire: 409 Conflict: already_exists: org `acme` exists"
        );
    }

    #[test]
    fn transport_display_flattens_the_chain() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let err = ClientError::Transport {
            endpoint: "GET /healthz".into(),
            source: Box::new(Outer(std::io::Error::other("connection refused"))),
        };
        assert_eq!(err.to_string(), "GET /healthz: connection refused");
        assert!(err.is_retryable());
    }

    #[test]
    fn retryable_statuses() {
        let check = |status: u16, expected: bool| {
            let status = StatusCode::from_u16(status).expect("valid status");
            assert_eq!(is_retryable_status(status), expected, "{status}");
        };
        check(408, true);
        check(429, true);
        check(500, true);
        check(503, true);
        check(400, false);
        check(401, false);
        check(404, false);
        check(409, false);
    }

    #[test]
    fn synthesized_bodies() {
        let body = synthesize_body(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>\n");
        assert_eq!(body.error.code, ErrorCode::Other);
        assert_eq!(body.error.message, "<html>bad gateway</html>");
        let body = synthesize_body(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(body.error.code, ErrorCode::Unavailable);
        assert_eq!(body.error.message, "Service Unavailable");
        let long = vec![b'x'; 600];
        assert!(
            synthesize_body(StatusCode::NOT_FOUND, &long)
                .error
                .message
                .ends_with('…')
        );
    }
}
