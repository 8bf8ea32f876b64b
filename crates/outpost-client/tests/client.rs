//! The client against real servers on 127.0.0.1: retries, Retry-After, status mapping, TLS and
//! mutual TLS, CONNECT and forward proxies, NO_PROXY, and the streaming log.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use outpost_client::{ClientError, Completion, HubClient, LogAppend, RetryPolicy};
use outpost_protocol::{
    AcquireRequest, CancelResponse, CompleteRequest, CompleteResponse, ErrorBody, ErrorCode,
    HeartbeatRequest, JobAssignment, JobResult, JobSpec, JobState, LogAppendResponse,
    RegisterRequest, RegisterResponse, SubmitJobRequest, SubmitJobResponse, Timestamp,
};
use support::{
    Pki, TestProxy, TestServer, client, config, empty, fast_retries, json, text, wait_for,
};
use tokio::net::TcpListener;

fn register_request() -> RegisterRequest {
    RegisterRequest {
        name: "r1".into(),
        labels: vec!["linux".into()],
        executor: "process".into(),
        version: "0.0.0".into(),
        capacity: 2,
    }
}

fn register_response() -> RegisterResponse {
    RegisterResponse {
        runner_id: "run-1".into(),
        lease_ttl_s: 60,
        heartbeat_interval_s: 20,
    }
}

fn submit_request() -> SubmitJobRequest {
    SubmitJobRequest {
        pipeline: Some("version: 1\n".into()),
        ..SubmitJobRequest::default()
    }
}

/// Answers with `failures` copies of `failure` first, then with `success`.
fn fail_then<F, S>(
    failures: usize,
    failure: F,
    success: S,
) -> impl Fn(support::Seen) -> std::future::Ready<http::Response<support::Body>>
where
    F: Fn() -> http::Response<support::Body>,
    S: Fn() -> http::Response<support::Body>,
{
    move |seen| {
        std::future::ready(if seen.index < failures {
            failure()
        } else {
            success()
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retries_503_then_succeeds() {
    let server = TestServer::start(fail_then(
        2,
        || json(503, &ErrorBody::new(ErrorCode::Unavailable, "busy")),
        || json(200, &register_response()),
    ))
    .await;
    let client = client(config(&server.url()));
    assert!(client.last_success().is_none());

    let answer = client
        .register(&register_request())
        .await
        .expect("register");

    assert_eq!(answer, register_response());
    let seen = server.seen();
    assert_eq!(seen.len(), 3, "two 503s, then the success");
    assert!(
        seen.iter()
            .all(|s| s.method == Method::POST && s.target == "/api/v1/runner/register")
    );
    assert_eq!(seen[2].header("authorization"), Some("Bearer test-token"));
    assert_eq!(seen[2].header("content-type"), Some("application/json"));
    let sent: RegisterRequest = serde_json::from_slice(&seen[2].body).expect("request body");
    assert_eq!(sent, register_request());
    assert_eq!(client.retries(), 2);
    assert!(client.last_success().is_some());
}

#[tokio::test]
async fn retries_stop_at_max_attempts_and_surface_the_last_answer() {
    let server = TestServer::start(|_| std::future::ready(text(502, "bad gateway"))).await;
    let mut config = config(&server.url());
    config.retry = fast_retries(3);
    let client = client(config);

    let err = client
        .list_jobs("acme", None, None)
        .await
        .expect_err("always 502");

    assert_eq!(server.seen().len(), 3);
    let ClientError::Api { status, body, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*status, StatusCode::BAD_GATEWAY);
    assert_eq!(body.error.message, "bad gateway");
    assert!(err.is_retryable());
    assert!(client.last_success().is_none());
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let server = TestServer::start(fail_then(
        1,
        || {
            let mut answer = json(429, &ErrorBody::new(ErrorCode::Other, "slow down"));
            answer
                .headers_mut()
                .insert("retry-after", "1".parse().expect("header"));
            answer
        },
        || json(200, &LogAppendResponse { committed: 3 }),
    ))
    .await;
    // Backoff alone would retry within 5 ms.
    let client = client(config(&server.url()));

    let outcome = client
        .append_log(
            &"job-1".into(),
            &"lease-1".into(),
            0,
            Bytes::from_static(b"abc"),
        )
        .await
        .expect("append");

    assert_eq!(outcome, LogAppend::Committed(3));
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at.duration_since(seen[0].at);
    assert!(
        gap >= Duration::from_secs(1),
        "second request came {gap:?} after the first"
    );
}

#[tokio::test]
async fn unauthorized_is_distinct_and_never_retried() {
    let server = TestServer::start(|_| {
        std::future::ready(json(
            401,
            &ErrorBody::new(ErrorCode::Unauthorized, "revoked"),
        ))
    })
    .await;
    let client = client(config(&server.url()));

    let req = HeartbeatRequest {
        runner_id: "run-1".into(),
        jobs: vec![],
        wait_s: 0,
    };
    let err = client.heartbeat(&req).await.expect_err("401");

    let ClientError::Unauthorized { endpoint } = &err else {
        panic!("{err}")
    };
    assert_eq!(endpoint, "POST /api/v1/runner/heartbeat");
    assert_eq!(
        err.to_string(),
        "POST /api/v1/runner/heartbeat: token revoked or invalid"
    );
    assert!(!err.is_retryable());
    assert_eq!(server.seen().len(), 1);
    assert_eq!(client.retries(), 0);
}

#[tokio::test]
async fn creating_calls_are_not_retried_once_sent() {
    let server = TestServer::start(|_| std::future::ready(empty(503))).await;
    let client = client(config(&server.url()));

    let err = client
        .submit_job("acme", &submit_request())
        .await
        .expect_err("503");
    assert_eq!(err.code(), Some(ErrorCode::Unavailable));
    let err = client.create_org("acme").await.expect_err("503");
    assert!(matches!(
        err,
        ClientError::Api {
            status: StatusCode::SERVICE_UNAVAILABLE,
            ..
        }
    ));
    let err = client
        .create_runner_token("acme", "ci")
        .await
        .expect_err("503");
    assert!(
        err.to_string()
            .starts_with("POST /api/v1/orgs/acme/runner-tokens: 503"),
        "{err}"
    );

    assert_eq!(server.seen().len(), 3, "one request per call");
    assert_eq!(client.retries(), 0);
}

/// An address nothing listens on (a port that was just free).
async fn refused_addr() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

#[tokio::test]
async fn connection_refused_is_retried_then_surfaced() {
    let addr = refused_addr().await;
    let mut config = config(&format!("http://{addr}"));
    config.retry = fast_retries(3);
    let client = client(config);

    let err = client
        .register(&register_request())
        .await
        .expect_err("nothing listens");

    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("POST /api/v1/runner/register: cannot connect to 127.0.0.1:"),
        "{text}"
    );
    assert!(err.is_retryable());
    assert_eq!(client.retries(), 2);
}

#[tokio::test]
async fn refused_connections_are_retried_even_for_creating_calls() {
    let addr = refused_addr().await;
    let mut config = config(&format!("http://{addr}"));
    config.retry = RetryPolicy {
        max_attempts: 0,
        max_elapsed: Duration::from_secs(30),
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    };
    let client = client(config);

    let call = tokio::spawn({
        let client = client.clone();
        async move { client.submit_job("acme", &submit_request()).await }
    });
    wait_for("a refused attempt", || client.retries() >= 1).await;
    let listener = TcpListener::bind(addr)
        .await
        .expect("rebind the refused port");
    let server = TestServer::serve(listener, None, |_| {
        std::future::ready(json(
            201,
            &SubmitJobResponse {
                job_id: "job-9".into(),
            },
        ))
    });

    let answer = call
        .await
        .expect("task")
        .expect("submitted once the hub is up");
    assert_eq!(answer.job_id, "job-9");
    assert_eq!(server.seen().len(), 1, "submitted exactly once");
}

#[tokio::test]
async fn request_timeout_stretches_by_the_long_poll_wait() {
    // The hub never answers.
    let server = TestServer::start(|_| std::future::pending()).await;
    let mut config = config(&server.url());
    config.request_timeout = Duration::from_millis(100);
    config.retry = fast_retries(2);
    let client = client(config);

    let req = AcquireRequest {
        runner_id: "run-1".into(),
        free_slots: 1,
        wait_s: 0,
    };
    let err = client.acquire(&req).await.expect_err("no answer");
    let ClientError::Timeout { endpoint, after } = &err else {
        panic!("{err}")
    };
    assert_eq!(endpoint, "POST /api/v1/runner/acquire");
    assert_eq!(*after, Duration::from_millis(100));
    assert_eq!(
        server.seen().len(),
        2,
        "timeouts of idempotent calls are retried"
    );

    let mut config = support::config(&server.url());
    config.request_timeout = Duration::from_millis(100);
    config.retry = RetryPolicy::never();
    let client = support::client(config);
    let req = AcquireRequest {
        runner_id: "run-1".into(),
        free_slots: 1,
        wait_s: 1,
    };
    let err = client.acquire(&req).await.expect_err("no answer");
    let ClientError::Timeout { after, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*after, Duration::from_millis(1100));
}

// ---------------------------------------------------------------------------------------------
// Outcomes and errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn acquire_204_is_none_and_200_is_the_job() {
    let assignment = JobAssignment {
        job_id: "job-1".into(),
        lease_id: "lease-1".into(),
        lease_expires_at: Timestamp::from_unix_millis(1_700_000_000_000),
        spec: JobSpec::Inline {
            pipeline: "version: 1\n".into(),
        },
        labels: vec![],
        variables: Default::default(),
        created_at: Timestamp::from_unix_millis(1_700_000_000_000),
    };
    let answer = assignment.clone();
    let server = TestServer::start(move |seen| {
        std::future::ready(if seen.index == 0 {
            empty(204)
        } else {
            json(200, &serde_json::json!({ "job": answer }))
        })
    })
    .await;
    let client = client(config(&server.url()));
    let req = AcquireRequest {
        runner_id: "run-1".into(),
        free_slots: 1,
        wait_s: 0,
    };

    assert_eq!(client.acquire(&req).await.expect("first acquire"), None);
    assert!(
        client.last_success().is_some(),
        "a 204 is a successful call"
    );
    assert_eq!(
        client.acquire(&req).await.expect("second acquire"),
        Some(assignment)
    );
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn log_gap_and_incomplete_log_are_outcomes() {
    let server = TestServer::start(|seen| {
        std::future::ready(match seen.target.as_str() {
            "/api/v1/runner/jobs/job-1/log?offset=0&lease_id=lease-1" => json(
                200,
                &LogAppendResponse {
                    committed: seen.body.len() as u64,
                },
            ),
            "/api/v1/runner/jobs/job-1/log?offset=10&lease_id=lease-1" => json(
                409,
                &ErrorBody::new(ErrorCode::LogGap, "gap").with_committed(5),
            ),
            "/api/v1/runner/jobs/job-1/complete" if seen.index == 2 => json(
                409,
                &ErrorBody::new(ErrorCode::LogIncomplete, "short").with_committed(5),
            ),
            "/api/v1/runner/jobs/job-1/complete" => json(
                200,
                &CompleteResponse {
                    job_id: "job-1".into(),
                    state: JobState::Success,
                },
            ),
            _ => json(404, &ErrorBody::new(ErrorCode::NotFound, "no route")),
        })
    })
    .await;
    let client = client(config(&server.url()));

    let first = client
        .append_log(
            &"job-1".into(),
            &"lease-1".into(),
            0,
            Bytes::from_static(b"hello"),
        )
        .await
        .expect("append");
    assert_eq!(first, LogAppend::Committed(5));
    let gap = client
        .append_log(
            &"job-1".into(),
            &"lease-1".into(),
            10,
            Bytes::from_static(b"later"),
        )
        .await
        .expect("gap");
    assert_eq!(gap, LogAppend::Gap { committed: 5 });

    let complete = CompleteRequest {
        lease_id: "lease-1".into(),
        result: JobResult::Success,
        failure: None,
        log_bytes: 10,
    };
    let short = client
        .complete(&"job-1".into(), &complete)
        .await
        .expect("complete");
    assert_eq!(short, Completion::LogIncomplete { committed: 5 });
    let done = client
        .complete(&"job-1".into(), &complete)
        .await
        .expect("complete again");
    assert_eq!(
        done,
        Completion::Done(CompleteResponse {
            job_id: "job-1".into(),
            state: JobState::Success
        })
    );

    let seen = server.seen();
    assert_eq!(seen.len(), 4, "409s are not retried");
    assert_eq!(seen[0].body.as_ref(), b"hello");
    assert_eq!(
        seen[0].header("content-type"),
        Some("application/octet-stream")
    );
}

#[tokio::test]
async fn api_errors_carry_the_body() {
    let server = TestServer::start(|seen| {
        std::future::ready(match seen.index {
            0 => json(
                422,
                &ErrorBody::new(ErrorCode::Unprocessable, "line 1: bad pipeline"),
            ),
            1 => text(404, "no such thing"),
            2 => json(
                409,
                &ErrorBody::new(ErrorCode::LeaseMismatch, "not your lease"),
            ),
            _ => text(200, "not json"),
        })
    })
    .await;
    let client = client(config(&server.url()));

    let err = client
        .submit_job("acme", &submit_request())
        .await
        .expect_err("422");
    assert_eq!(err.code(), Some(ErrorCode::Unprocessable));
    assert_eq!(
        err.to_string(),
        "POST /api/v1/orgs/acme/jobs: 422 Unprocessable Entity: unprocessable: line 1: bad pipeline"
    );
    assert!(!err.is_retryable());

    let err = client.get_job("acme", "job-1").await.expect_err("404");
    let ClientError::Api {
        status,
        body,
        endpoint,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (*status, body.error.code),
        (StatusCode::NOT_FOUND, ErrorCode::NotFound)
    );
    assert_eq!(body.error.message, "no such thing");
    assert_eq!(endpoint, "GET /api/v1/orgs/acme/jobs/job-1");

    let err = client
        .append_log(&"job-1".into(), &"lease-1".into(), 0, Bytes::new())
        .await
        .expect_err("lease mismatch");
    assert_eq!(err.code(), Some(ErrorCode::LeaseMismatch));

    let err = client
        .cancel_job("acme", "job-1")
        .await
        .expect_err("not json");
    assert!(matches!(err, ClientError::Decode { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("POST /api/v1/orgs/acme/jobs/job-1/cancel: cannot decode")
    );
    assert!(client.last_success().is_none());
}

#[tokio::test]
async fn admin_calls_use_their_paths() {
    let server = TestServer::start(|seen| {
        std::future::ready(match (seen.method.as_str(), seen.target.as_str()) {
            ("GET", "/api/v1/orgs/acme/jobs?state=running&limit=5") => {
                json(200, &serde_json::json!({ "jobs": [] }))
            }
            ("GET", "/api/v1/orgs/acme/runner-tokens") => {
                json(200, &serde_json::json!({ "tokens": [] }))
            }
            ("GET", "/api/v1/orgs/acme/runners") => {
                json(200, &serde_json::json!({ "runners": [] }))
            }
            ("DELETE", "/api/v1/orgs/acme/runner-tokens/tok%2F1") => empty(204),
            ("POST", "/api/v1/orgs/acme/jobs/a%20b/cancel") => json(
                200,
                &CancelResponse {
                    job_id: "a b".into(),
                    state: JobState::Running,
                    cancel_requested: true,
                },
            ),
            ("GET", "/healthz") => text(200, "ok"),
            _ => json(404, &ErrorBody::new(ErrorCode::NotFound, "no route")),
        })
    })
    .await;
    let client = client(config(&server.url()));

    let jobs = client
        .list_jobs("acme", Some(JobState::Running), Some(5))
        .await
        .expect("jobs");
    assert!(jobs.is_empty());
    assert!(
        client
            .list_runner_tokens("acme")
            .await
            .expect("tokens")
            .is_empty()
    );
    assert!(
        client
            .list_runners("acme")
            .await
            .expect("runners")
            .is_empty()
    );
    client
        .revoke_runner_token("acme", "tok/1")
        .await
        .expect("revoke");
    let cancelled = client.cancel_job("acme", "a b").await.expect("cancel");
    assert!(cancelled.cancel_requested);
    client.healthz().await.expect("healthz");
    assert_eq!(server.seen().len(), 6);
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn read_and_follow_the_log() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let server = TestServer::start(move |seen| {
        let follow = seen.target.ends_with("follow=true");
        let rx = if follow {
            rx.lock().expect("rx").take()
        } else {
            None
        };
        async move {
            if !follow {
                return text(200, "whole log");
            }
            let Some(rx) = rx else { return empty(500) };
            let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk)),
                    rx,
                ))
            });
            http::Response::new(BodyExt::boxed(StreamBody::new(chunks)))
        }
    })
    .await;
    let client = client(config(&server.url()));

    let log = client.read_log("acme", "job-1", 4).await.expect("read");
    assert_eq!(log.as_ref(), b"whole log");

    let mut stream = client.follow_log("acme", "job-1", 4).await.expect("follow");
    tx.send(Bytes::from_static(b"first ")).expect("send");
    assert_eq!(
        stream.next_chunk().await.expect("chunk").as_deref(),
        Some(&b"first "[..])
    );
    assert_eq!(stream.offset(), 10);
    tx.send(Bytes::from_static(b"second")).expect("send");
    assert_eq!(
        stream.next().await.expect("item").expect("chunk").as_ref(),
        b"second"
    );
    drop(tx);
    assert!(
        stream.next().await.is_none(),
        "the stream ends with the job"
    );

    let seen = server.seen();
    assert_eq!(
        seen[0].target,
        "/api/v1/orgs/acme/jobs/job-1/log?offset=4&follow=false"
    );
    assert_eq!(
        seen[1].target,
        "/api/v1/orgs/acme/jobs/job-1/log?offset=4&follow=true"
    );
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

fn ok_register(_: support::Seen) -> std::future::Ready<http::Response<support::Body>> {
    std::future::ready(json(200, &register_response()))
}

#[tokio::test]
async fn tls_with_a_custom_ca_speaks_http2() {
    let pki = Pki::generate();
    let server = TestServer::start_tls(pki.server_config(false), ok_register).await;
    let mut config = config(&server.url());
    config.ca_file = Some(pki.ca_file.clone());
    let client = client(config);

    assert_eq!(
        client
            .register(&register_request())
            .await
            .expect("register"),
        register_response()
    );
    // Through `localhost` too (a DNS name rather than an IP address in the certificate).
    let mut config = support::config(&format!("https://localhost:{}", server.addr.port()));
    config.ca_file = Some(pki.ca_file.clone());
    support::client(config)
        .register(&register_request())
        .await
        .expect("register via localhost");

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|s| s.version == Version::HTTP_2),
        "ALPN picked h2"
    );
}

#[tokio::test]
async fn tls_refuses_a_server_from_another_ca() {
    let pki = Pki::generate();
    let other = Pki::generate();
    let server = TestServer::start_tls(pki.server_config(false), ok_register).await;
    let mut config = config(&server.url());
    config.ca_file = Some(other.ca_file.clone());
    config.retry = RetryPolicy::never();
    let client = client(config);

    let err = client
        .register(&register_request())
        .await
        .expect_err("untrusted");
    let text = err.to_string();
    assert!(text.contains("TLS handshake with 127.0.0.1:"), "{text}");
    assert!(text.contains("invalid peer certificate"), "{text}");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::generate();
    let server = TestServer::start_tls(pki.server_config(true), ok_register).await;

    let mut config = config(&server.url());
    config.ca_file = Some(pki.ca_file.clone());
    config.retry = RetryPolicy::never();
    let without = client(config.clone());
    let err = without
        .register(&register_request())
        .await
        .expect_err("no client certificate");
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    assert!(server.seen().is_empty(), "the server refused the handshake");

    config.client_cert = Some(pki.client_cert.clone());
    config.client_key = Some(pki.client_key.clone());
    let with = client(config);
    assert_eq!(
        with.register(&register_request()).await.expect("register"),
        register_response()
    );
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn bad_tls_files_name_themselves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not pem at all\n").expect("write");
    let pki = Pki::generate();

    let mut config = config("https://hub.test");
    config.ca_file = Some(garbage.clone());
    let err = HubClient::with_env(config, |_| None).expect_err("bad ca file");
    let want = format!("ca_file {}: no PEM certificate", garbage.display());
    assert!(err.to_string().contains(&want), "{err}");

    let mut config = support::config("https://hub.test");
    config.ca_file = Some(pki.ca_file.clone());
    config.client_cert = Some(pki.client_cert.clone());
    config.client_key = Some(garbage.clone());
    let err = HubClient::with_env(config, |_| None).expect_err("bad key file");
    let want = format!("client_key {}: no PEM private key", garbage.display());
    assert!(err.to_string().contains(&want), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Proxies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn https_through_a_connect_proxy_from_config() {
    let pki = Pki::generate();
    let server = TestServer::start_tls(pki.server_config(false), ok_register).await;
    let proxy = TestProxy::start().await;
    let mut config = config(&server.url());
    config.ca_file = Some(pki.ca_file.clone());
    config.proxy = Some(format!("http://alice:s%3Acret@{}", proxy.addr));
    let client = client(config);
    assert_eq!(client.proxy(), Some(proxy.url().as_str()));

    client
        .register(&register_request())
        .await
        .expect("register through the proxy");

    let seen = proxy.seen();
    assert_eq!(seen.len(), 1);
    let target = format!("127.0.0.1:{}", server.addr.port());
    assert_eq!(seen[0].request_line, format!("CONNECT {target} HTTP/1.1"));
    // base64("alice:s:cret")
    assert_eq!(
        seen[0].proxy_authorization.as_deref(),
        Some("Basic YWxpY2U6czpjcmV0")
    );
    assert_eq!(server.seen().len(), 1);
    assert!(
        server.seen()[0].header("proxy-authorization").is_none(),
        "tunnelled, not forwarded"
    );
}

#[tokio::test]
async fn https_proxy_from_the_environment() {
    let pki = Pki::generate();
    let server = TestServer::start_tls(pki.server_config(false), ok_register).await;
    let proxy = TestProxy::start().await;
    let mut config = config(&server.url());
    config.ca_file = Some(pki.ca_file.clone());
    let env: HashMap<&str, String> = HashMap::from([("https_proxy", proxy.url())]);
    let client = HubClient::with_env(config, |name| env.get(name).cloned()).expect("client");

    client
        .register(&register_request())
        .await
        .expect("register through the proxy");

    let seen = proxy.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].request_line.starts_with("CONNECT 127.0.0.1:"),
        "{seen:?}"
    );
    assert_eq!(seen[0].proxy_authorization, None);
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn no_proxy_bypasses_the_proxy() {
    let server = TestServer::start(ok_register).await;
    let proxy = TestProxy::start().await;
    let env: HashMap<&str, String> = HashMap::from([
        ("HTTP_PROXY", proxy.url()),
        ("NO_PROXY", "example.com, 127.0.0.0/8".to_owned()),
    ]);
    let client =
        HubClient::with_env(config(&server.url()), |name| env.get(name).cloned()).expect("client");
    assert_eq!(client.proxy(), None);

    client
        .register(&register_request())
        .await
        .expect("register");

    assert!(proxy.seen().is_empty());
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn http_through_a_forward_proxy() {
    let server = TestServer::start(ok_register).await;
    let proxy = TestProxy::start().await;
    let env: HashMap<&str, String> =
        HashMap::from([("HTTP_PROXY", format!("http://bob:pw@{}", proxy.addr))]);
    let client =
        HubClient::with_env(config(&server.url()), |name| env.get(name).cloned()).expect("client");

    client
        .register(&register_request())
        .await
        .expect("register through the proxy");

    let seen = proxy.seen();
    assert_eq!(seen.len(), 1);
    let want = format!("POST {}/api/v1/runner/register HTTP/1.1", server.url());
    assert_eq!(seen[0].request_line, want);
    // base64("bob:pw")
    assert_eq!(
        seen[0].proxy_authorization.as_deref(),
        Some("Basic Ym9iOnB3")
    );
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn clones_share_connections_and_bookkeeping() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start({
        let calls = calls.clone();
        move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(json(200, &register_response()))
        }
    })
    .await;
    let client = client(config(&server.url()));
    let clone = client.clone();
    clone.register(&register_request()).await.expect("register");
    assert!(
        client.last_success().is_some(),
        "the clone's success is the original's"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
