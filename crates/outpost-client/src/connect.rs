//! Opening connections to the hub: TCP, then (when a proxy applies) a `CONNECT` tunnel or a
//! forward proxy, then TLS with ALPN (`h2`, `http/1.1`). A `tower_service::Service<Uri>` that
//! hyper-util's pooled client drives.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::poll_fn;
use http::uri::Scheme;
use http::{HeaderValue, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower_service::Service;

use crate::config::{ClientConfig, redact_userinfo};
use crate::error::{BoxError, ClientError};

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// The rustls client config: the `ca_file` bundle or else the system's roots, the client
/// certificate when set, ALPN `h2` then `http/1.1`, the ring provider.
pub(crate) fn tls_config(
    config: &ClientConfig,
    load_system_roots: bool,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &config.ca_file {
        let what = format!("ca_file {}", path.display());
        let certs = read_certs(path, &what)?;
        for cert in certs {
            roots.add(cert).map_err(|e| ClientError::config(&what, e))?;
        }
    } else if load_system_roots {
        let loaded = rustls_native_certs::load_native_certs();
        let (added, _unparsable) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            let why = loaded
                .errors
                .first()
                .map_or_else(|| "none found".to_owned(), |e| format!("none loaded: {e}"));
            return Err(ClientError::config(
                "system root certificates",
                format!("{why}; set ca_file to a PEM bundle"),
            ));
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::config("tls", e))?
        .with_root_certificates(roots);
    let mut tls = match (&config.client_cert, &config.client_key) {
        (Some(cert_path), Some(key_path)) => {
            let what = format!("client_cert {}", cert_path.display());
            let certs = read_certs(cert_path, &what)?;
            let key_what = format!("client_key {}", key_path.display());
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| ClientError::config(&key_what, pem_reason(e, "private key")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ClientError::config(what, e))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(ClientError::config(
                "client_key",
                "must be set along with client_cert",
            ));
        }
        (None, Some(_)) => {
            return Err(ClientError::config(
                "client_cert",
                "must be set along with client_key",
            ));
        }
    };
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ClientError::config(what, pem_reason(e, "certificate")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::config(what, pem_reason(e, "certificate")))?;
    if certs.is_empty() {
        return Err(ClientError::config(what, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn pem_reason(err: rustls::pki_types::pem::Error, thing: &str) -> String {
    use rustls::pki_types::pem::Error;
    match err {
        Error::Io(e) => format!("cannot read: {e}"),
        Error::NoItemsFound => format!("no PEM {thing} in the file"),
        other => format!("invalid PEM: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Proxy selection
// ---------------------------------------------------------------------------------------------

/// How connections reach the hub.
#[derive(Clone)]
pub(crate) enum Route {
    /// Straight to the hub.
    Direct,
    /// Through an HTTP proxy's `CONNECT` tunnel (https hubs).
    Tunnel {
        proxy: Uri,
        auth: Option<HeaderValue>,
    },
    /// To an HTTP proxy with absolute-form requests (http hubs); `auth` goes on every request.
    Forward {
        proxy: Uri,
        auth: Option<HeaderValue>,
    },
}

impl Route {
    /// The proxy in use, without its password, for logs.
    pub(crate) fn proxy_display(&self) -> Option<String> {
        match self {
            Self::Direct => None,
            Self::Tunnel { proxy, .. } | Self::Forward { proxy, .. } => {
                Some(proxy.to_string().trim_end_matches('/').to_owned())
            }
        }
    }
}

/// Chooses the route to `base` from the config and the environment (see [`ClientConfig`]).
pub(crate) fn route(
    config: &ClientConfig,
    base: &Uri,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Route, ClientError> {
    let https = base.scheme() == Some(&Scheme::HTTPS);
    let first = |names: &[&str]| {
        names.iter().find_map(|name| {
            env(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| ((*name).to_owned(), v))
        })
    };
    let chosen = match config.proxy.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => Some(("proxy".to_owned(), url.to_owned())),
        _ if config.use_env_proxy => {
            let specific = if https {
                first(&["HTTPS_PROXY", "https_proxy"])
            } else {
                first(&["HTTP_PROXY", "http_proxy"])
            };
            specific.or_else(|| first(&["ALL_PROXY", "all_proxy"]))
        }
        _ => None,
    };
    let Some((source, url)) = chosen else {
        return Ok(Route::Direct);
    };
    check_proxy_url(&source, &url)?;

    let no_proxy = match &config.no_proxy {
        Some(list) => list.clone(),
        None if config.use_env_proxy => first(&["NO_PROXY", "no_proxy"])
            .map(|(_, v)| v)
            .unwrap_or_default(),
        None => String::new(),
    };
    let matcher = Matcher::builder().all(url.as_str()).no(no_proxy).build();
    let Some(intercept) = matcher.intercept(base) else {
        return Ok(Route::Direct);
    };
    let proxy = intercept.uri().clone();
    let auth = intercept.basic_auth().cloned();
    Ok(if https {
        Route::Tunnel { proxy, auth }
    } else {
        Route::Forward { proxy, auth }
    })
}

/// Refuses proxy URLs hyper-util's matcher would silently ignore, naming where they came from.
fn check_proxy_url(source: &str, url: &str) -> Result<(), ClientError> {
    let shown = redact_userinfo(url);
    let fail = |reason: String| ClientError::config(source, format!("`{shown}`: {reason}"));
    let uri: Uri = url.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
    match uri.scheme_str() {
        None | Some("http") => {}
        Some("https") => {
            return Err(fail(
                "https:// proxies are not supported; use the proxy's http:// address (the \
                 connection to the hub is still TLS end to end)"
                    .to_owned(),
            ));
        }
        Some(other) => return Err(fail(format!("unsupported proxy scheme `{other}`"))),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(fail("no host".to_owned())),
    }
}

// ---------------------------------------------------------------------------------------------
// The connector
// ---------------------------------------------------------------------------------------------

/// Opens connections along a [`Route`], with TLS for https hubs, within `timeout`.
#[derive(Clone)]
pub(crate) struct Connector {
    tcp: HttpConnector,
    route: Route,
    tls: Option<TlsConnector>,
    timeout: Duration,
}

impl Connector {
    pub(crate) fn new(
        route: Route,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        Self {
            tcp,
            route,
            tls: tls.map(TlsConnector::from),
            timeout,
        }
    }

    async fn connect(self, dst: Uri) -> Result<Conn, BoxError> {
        let authority = dst.authority().map_or_else(String::new, |a| a.to_string());
        let (tcp, proxied) = match self.route {
            Route::Direct => {
                let tcp = call(self.tcp, dst.clone()).await.map_err(|e| {
                    ConnectError::boxed(format!("cannot connect to {authority}"), e)
                })?;
                (tcp, false)
            }
            Route::Tunnel { proxy, auth } => {
                let mut tunnel = Tunnel::new(proxy.clone(), self.tcp);
                if let Some(auth) = auth {
                    tunnel = tunnel.with_auth(auth);
                }
                let tcp = call(tunnel, dst.clone()).await.map_err(|e| {
                    let proxy = proxy.to_string();
                    let proxy = proxy.trim_end_matches('/');
                    ConnectError::boxed(
                        format!("cannot open a tunnel to {authority} through proxy {proxy}"),
                        e,
                    )
                })?;
                (tcp, false)
            }
            Route::Forward { proxy, .. } => {
                let tcp = call(self.tcp, proxy.clone()).await.map_err(|e| {
                    ConnectError::boxed(format!("cannot connect to proxy {proxy}"), e)
                })?;
                (tcp, true)
            }
        };
        let tcp = tcp.into_inner();

        if dst.scheme() != Some(&Scheme::HTTPS) || proxied {
            return Ok(Conn {
                io: Io::Plain(TokioIo::new(tcp)),
                proxied,
                h2: false,
            });
        }
        let Some(tls) = self.tls else {
            return Err(ConnectError::boxed(
                format!("cannot connect to {authority}"),
                "no TLS configuration for an https URL".into(),
            ));
        };
        let host = dst
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_owned()).map_err(|e| {
            ConnectError::boxed(format!("invalid TLS server name `{host}`"), e.into())
        })?;
        let stream = tls.connect(server_name, tcp).await.map_err(|e| {
            ConnectError::boxed(format!("TLS handshake with {authority} failed"), e.into())
        })?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(Conn {
            io: Io::Tls(Box::new(TokioIo::new(stream))),
            proxied: false,
            h2,
        })
    }
}

/// Drives a tower service once, honouring `poll_ready`.
async fn call<S>(mut service: S, dst: Uri) -> Result<S::Response, BoxError>
where
    S: Service<Uri>,
    S::Error: Into<BoxError>,
{
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    service.call(dst).await.map_err(Into::into)
}

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let timeout = this.timeout;
            match tokio::time::timeout(timeout, this.connect(dst)).await {
                Ok(result) => result,
                Err(_elapsed) => {
                    let message =
                        format!("connect timed out after {}", outpost_time::format(timeout));
                    Err(Box::new(io::Error::new(io::ErrorKind::TimedOut, message)) as BoxError)
                }
            }
        })
    }
}

/// A connection failure with what was being attempted.
#[derive(Debug)]
struct ConnectError {
    context: String,
    source: BoxError,
}

impl ConnectError {
    fn boxed(context: String, source: BoxError) -> BoxError {
        Box::new(Self { context, source })
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

// ---------------------------------------------------------------------------------------------
// The connection
// ---------------------------------------------------------------------------------------------

/// One open connection to the hub (or to a forward proxy).
pub(crate) struct Conn {
    io: Io,
    proxied: bool,
    h2: bool,
}

enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let connected = match &self.io {
            Io::Plain(tcp) => tcp.connected(),
            Io::Tls(tls) => tls.inner().get_ref().0.connected(),
        };
        let connected = connected.proxy(self.proxied);
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn route_for(
        base: &str,
        config: impl FnOnce(&mut ClientConfig),
        env: &[(&str, &str)],
    ) -> Result<Route, ClientError> {
        let mut c = ClientConfig::new(base, "t");
        config(&mut c);
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let base: Uri = base.parse().expect("base uri");
        route(&c, &base, &|name| env.get(name).cloned())
    }

    /// `(kind, proxy)` of a route, for compact assertions.
    fn describe(route: &Route) -> (&'static str, Option<String>) {
        let kind = match route {
            Route::Direct => "direct",
            Route::Tunnel { .. } => "tunnel",
            Route::Forward { .. } => "forward",
        };
        (kind, route.proxy_display())
    }

    fn check(
        base: &str,
        config: impl FnOnce(&mut ClientConfig),
        env: &[(&str, &str)],
        expected: (&str, Option<&str>),
    ) {
        let route = route_for(base, config, env).expect("valid route");
        let (kind, proxy) = describe(&route);
        assert_eq!((kind, proxy.as_deref()), expected, "{base} {env:?}");
    }

    #[test]
    fn proxy_selection() {
        let none = |_: &mut ClientConfig| {};
        check("https://hub.example", none, &[], ("direct", None));
        check(
            "https://hub.example",
            none,
            &[("HTTPS_PROXY", "http://p:3128")],
            ("tunnel", Some("http://p:3128")),
        );
        check(
            "https://hub.example",
            none,
            &[("https_proxy", "p2:8080"), ("HTTP_PROXY", "http://other:1")],
            ("tunnel", Some("http://p2:8080")),
        );
        check(
            "https://hub.example",
            none,
            &[("HTTP_PROXY", "http://p:1")],
            ("direct", None),
        );
        check(
            "http://hub.example",
            none,
            &[("HTTP_PROXY", "http://p:1")],
            ("forward", Some("http://p:1")),
        );
        check(
            "http://hub.example",
            none,
            &[("ALL_PROXY", "http://all:1")],
            ("forward", Some("http://all:1")),
        );
        // The config's proxy wins over the environment.
        check(
            "https://hub.example",
            |c| c.proxy = Some("http://cfg:3128".into()),
            &[("HTTPS_PROXY", "http://env:1")],
            ("tunnel", Some("http://cfg:3128")),
        );
        // use_env_proxy = false ignores the environment.
        check(
            "https://hub.example",
            |c| c.use_env_proxy = false,
            &[("HTTPS_PROXY", "http://env:1")],
            ("direct", None),
        );
    }

    #[test]
    fn no_proxy_rules() {
        let env = [("HTTPS_PROXY", "http://p:3128")];
        let none = |_: &mut ClientConfig| {};
        check(
            "https://hub.example",
            none,
            &[env[0], ("NO_PROXY", "example")],
            ("direct", None),
        );
        check(
            "https://hub.example",
            none,
            &[env[0], ("no_proxy", ".example, 10.0.0.0/8")],
            ("direct", None),
        );
        check(
            "https://hub.example",
            none,
            &[env[0], ("NO_PROXY", "nothub.example")],
            ("tunnel", Some("http://p:3128")),
        );
        check(
            "https://10.1.2.3",
            none,
            &[env[0], ("NO_PROXY", "10.0.0.0/8")],
            ("direct", None),
        );
        // The config's no_proxy replaces the environment's.
        check(
            "https://hub.example",
            |c| c.no_proxy = Some("other".into()),
            &[env[0], ("NO_PROXY", "hub.example")],
            ("tunnel", Some("http://p:3128")),
        );
        check(
            "https://hub.example",
            |c| c.no_proxy = Some("*".into()),
            &[env[0]],
            ("direct", None),
        );
    }

    #[test]
    fn proxy_auth_comes_from_userinfo() {
        let route = route_for(
            "https://hub",
            |_| {},
            &[("HTTPS_PROXY", "http://al%40x:se%3Ac@p:1")],
        )
        .expect("valid");
        let Route::Tunnel { proxy, auth } = route else {
            panic!("expected a tunnel")
        };
        assert_eq!(proxy.to_string(), "http://p:1/");
        // base64("al@x:se:c")
        assert_eq!(
            auth.expect("auth").to_str().ok(),
            Some("Basic YWxAeDpzZTpj")
        );
    }

    #[test]
    fn bad_proxy_urls_name_their_source() {
        let check = |env: (&str, &str), what: &str, reason: &str| {
            let err = route_for("https://hub", |_| {}, &[env])
                .err()
                .expect("an error");
            let text = err.to_string();
            let ClientError::Config { what: got, .. } = &err else {
                panic!("{text}")
            };
            assert_eq!(got, what, "{text}");
            assert!(text.contains(reason), "{text}");
        };
        check(
            ("HTTPS_PROXY", "socks5://p:1"),
            "HTTPS_PROXY",
            "unsupported proxy scheme",
        );
        check(
            ("https_proxy", "https://u:pw@p:1"),
            "https_proxy",
            "https:// proxies",
        );
        check(
            ("HTTPS_PROXY", "http://bad host"),
            "HTTPS_PROXY",
            "not a URL",
        );
        let err = route_for(
            "https://hub",
            |c| c.proxy = Some("ftp://u:pw@x".into()),
            &[],
        )
        .err()
        .expect("an error");
        assert!(err.to_string().contains("proxy: `ftp://u:***@x`"), "{err}");
    }
}
