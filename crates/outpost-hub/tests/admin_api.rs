//! The admin side of the hub over real sockets: organizations and credentials, job submission
//! and validation, listing, cancel, health, metrics, routing errors, TLS.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{PIPELINE, TestHub, unique};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use outpost_protocol::{
    CancelResponse, CreateOrgRequest, CreateOrgResponse, ErrorCode, GitSource, JobList, JobState,
    RunnerTokenList, Source, SubmitJobRequest, SubmitJobResponse, paths,
};

#[tokio::test]
async fn only_the_admin_key_creates_organizations() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("acme")).await;
    assert!(org.api_key.starts_with("opk_"));
    assert!(org.runner_token.starts_with("oprt_"));
    let request = CreateOrgRequest {
        name: unique("other"),
    };
    org.api
        .post_json(paths::ORGS, &request)
        .await
        .expect_error(StatusCode::FORBIDDEN, ErrorCode::Forbidden);
    hub.api("opk_bogus")
        .post_json(paths::ORGS, &request)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized);
    hub.anonymous()
        .post_json(paths::ORGS, &request)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized);
    // A runner token is no admin credential.
    org.runner_api
        .get(&paths::jobs(&org.name))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized);
    let again = CreateOrgRequest {
        name: org.name.clone(),
    };
    hub.admin()
        .post_json(paths::ORGS, &again)
        .await
        .expect_error(StatusCode::CONFLICT, ErrorCode::AlreadyExists);
    let bad = CreateOrgRequest {
        name: "no spaces/slashes".into(),
    };
    hub.admin()
        .post_json(paths::ORGS, &bad)
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Unprocessable);
    let created: CreateOrgResponse = hub
        .admin()
        .post_json(paths::ORGS, &request)
        .await
        .expect_status(StatusCode::CREATED)
        .json();
    assert_eq!(created.name, request.name);
}

#[tokio::test]
async fn another_orgs_key_sees_nothing() {
    let hub = TestHub::start(|_| {}).await;
    let a = hub.org(&unique("a")).await;
    let b = hub.org(&unique("b")).await;
    let job = a.submit(&[]).await;
    // B's key on A's org: 404 like an org that does not exist.
    let foreign = b.api.get(&paths::jobs(&a.name)).await;
    let missing = b.api.get(&paths::jobs("no-such-org")).await;
    foreign.expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    missing.expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    b.api
        .get(&paths::job(&a.name, &job))
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    b.api
        .get(&paths::job(&b.name, &job))
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    b.api
        .post_json(&paths::job_cancel(&a.name, &job), &serde_json::json!({}))
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    b.api
        .get(&paths::runner_tokens(&a.name))
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    // The admin key sees every org.
    let details = hub
        .admin()
        .get(&paths::job(&a.name, &job))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(details.json::<outpost_protocol::JobDetails>().job_id, job);
}

#[tokio::test]
async fn runner_tokens_are_listed_without_secrets_and_revoked() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("tokens")).await;
    let list: RunnerTokenList = org
        .api
        .get(&paths::runner_tokens(&org.name))
        .await
        .expect_status(StatusCode::OK)
        .json();
    assert_eq!(list.tokens.len(), 1);
    assert_eq!(list.tokens[0].id, org.token_id);
    assert!(list.tokens[0].revoked_at.is_none());
    let raw = org.api.get(&paths::runner_tokens(&org.name)).await.text();
    assert!(
        !raw.contains(&org.runner_token),
        "the token itself is never listed"
    );
    let path = paths::runner_token(&org.name, &org.token_id);
    org.api
        .delete(&path)
        .await
        .expect_status(StatusCode::NO_CONTENT);
    org.api
        .delete(&path)
        .await
        .expect_status(StatusCode::NO_CONTENT);
    let list: RunnerTokenList = org
        .api
        .get(&paths::runner_tokens(&org.name))
        .await
        .expect_status(StatusCode::OK)
        .json();
    assert!(list.tokens[0].revoked_at.is_some());
    org.api
        .delete(&paths::runner_token(&org.name, "t_nope"))
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
}

#[tokio::test]
async fn submissions_are_validated() {
    let hub = TestHub::start(|c| c.max_pipeline_bytes = 4096).await;
    let org = hub.org(&unique("submit")).await;
    let path = paths::jobs(&org.name);
    let submit = |request: SubmitJobRequest| {
        let api = org.api.clone();
        let path = path.clone();
        async move { api.post_json(&path, &request).await }
    };
    let bad = submit(SubmitJobRequest {
        pipeline: Some("version: 1\nsteps: 3\n".into()),
        ..Default::default()
    })
    .await;
    let message = bad
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Unprocessable)
        .error
        .message;
    assert!(
        message.starts_with("<inline>:"),
        "the parser's message names the file: {message}"
    );
    let source = Source {
        git: GitSource {
            url: "https://git.example/app.git".into(),
            git_ref: None,
        },
        path: ".outpost.yml".into(),
    };
    let both = SubmitJobRequest {
        pipeline: Some(PIPELINE.into()),
        source: Some(source.clone()),
        ..Default::default()
    };
    submit(both)
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Unprocessable);
    submit(SubmitJobRequest::default())
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Unprocessable);
    let empty_url = Source {
        git: GitSource {
            url: " ".into(),
            git_ref: None,
        },
        ..source.clone()
    };
    submit(SubmitJobRequest {
        source: Some(empty_url),
        ..Default::default()
    })
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Unprocessable);
    let huge = format!("{PIPELINE}# {}\n", "x".repeat(5000));
    submit(SubmitJobRequest {
        pipeline: Some(huge),
        ..Default::default()
    })
    .await
    .expect_error(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge);
    let unknown = serde_json::json!({"pipeline": PIPELINE, "priority": 1});
    org.api
        .post_json(&path, &unknown)
        .await
        .expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
    let ok: SubmitJobResponse = submit(SubmitJobRequest {
        source: Some(source.clone()),
        ..Default::default()
    })
    .await
    .expect_status(StatusCode::CREATED)
    .json();
    let details = org.job(ok.job_id.as_str()).await;
    assert_eq!(
        (details.state, details.spec.source().cloned()),
        (JobState::Queued, Some(source))
    );
}

#[tokio::test]
async fn oversized_json_bodies_are_refused_with_413() {
    let hub = TestHub::start(|c| c.max_json_body_bytes = 1024).await;
    let org = hub.org(&unique("big")).await;
    let body = serde_json::json!({"description": "x".repeat(2000)});
    org.api
        .post_json(&paths::runner_tokens(&org.name), &body)
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge);
}

#[tokio::test]
async fn jobs_are_listed_newest_first_with_filter_and_limit() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("list")).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(org.submit(&[]).await);
    }
    let cancelled: CancelResponse = org
        .api
        .post_json(
            &paths::job_cancel(&org.name, &ids[1]),
            &serde_json::json!({}),
        )
        .await
        .expect_status(StatusCode::OK)
        .json();
    assert_eq!(
        (cancelled.state, cancelled.cancel_requested),
        (JobState::Cancelled, true)
    );
    let list = |query: &str| {
        let path = format!("{}{query}", paths::jobs(&org.name));
        let api = org.api.clone();
        async move { api.get(&path).await }
    };
    let all: JobList = list("").await.expect_status(StatusCode::OK).json();
    let got: Vec<_> = all.jobs.iter().map(|j| j.job_id.clone()).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(got, newest_first);
    let queued: JobList = list("?state=queued&limit=2")
        .await
        .expect_status(StatusCode::OK)
        .json();
    let got: Vec<_> = queued.jobs.iter().map(|j| j.job_id.clone()).collect();
    assert_eq!(got, vec![ids[3].clone(), ids[2].clone()]);
    let done: JobList = list("?state=cancelled")
        .await
        .expect_status(StatusCode::OK)
        .json();
    assert_eq!(done.jobs.len(), 1);
    assert!(done.jobs[0].finished_at.is_some());
    list("?state=sleeping")
        .await
        .expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
    list("?limit=501")
        .await
        .expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
    list("?limit=many")
        .await
        .expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
    // A cancelled queued job is never handed out.
    let runner = org.register("r", &[]).await;
    for want in [&ids[0], &ids[2], &ids[3]] {
        assert_eq!(
            org.acquire(&runner, 0)
                .await
                .map(|j| j.job_id.into_string())
                .as_ref(),
            Some(want)
        );
    }
    assert!(org.acquire(&runner, 0).await.is_none());
}

#[tokio::test]
async fn health_metrics_and_routing_errors() {
    let hub = TestHub::start(|_| {}).await;
    let health = hub
        .anonymous()
        .get(paths::HEALTHZ)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(health.text(), "ok");
    let org = hub.org(&unique("metrics")).await;
    org.submit(&[]).await;
    assert_eq!(hub.metric("outpost_hub_queue_depth").await, 1.0);
    let text = hub.anonymous().get(paths::METRICS).await.text();
    for needle in [
        "outpost_hub_jobs{state=\"queued\"} 1",
        "outpost_hub_http_requests_total{",
        "outpost_hub_pickup_latency_seconds_bucket",
        "outpost_hub_log_bytes_appended_total",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    hub.anonymous()
        .get("/api/v1/nowhere")
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    hub.admin()
        .raw(Method::GET, paths::ORGS, None, Bytes::new())
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::BadRequest);
    hub.admin()
        .raw(Method::PUT, &paths::jobs(&org.name), None, Bytes::new())
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::BadRequest);
}

#[tokio::test]
async fn the_admin_key_from_the_config_is_used_and_no_file_is_written() {
    let key = "opadm_0123456789abcdef0123456789".to_owned();
    let hub = TestHub::start(|c| c.admin_key = Some(key.clone())).await;
    assert_eq!(hub.admin_key, key);
    assert!(!hub.config.admin_key_path().exists());
    hub.org(&unique("k")).await;
}

#[tokio::test]
async fn a_generated_admin_key_file_is_private() {
    let hub = TestHub::start(|_| {}).await;
    let path = hub.config.admin_key_path();
    let text = std::fs::read_to_string(&path).expect("key file");
    assert_eq!(text.trim(), hub.admin_key);
    assert!(hub.admin_key.starts_with("opadm_"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn the_library_admin_api_works_on_the_same_store() {
    let hub = TestHub::start(|_| {}).await;
    let api_key = hub.hub.create_org("embedded").await.expect("org");
    let (id, token) = hub
        .hub
        .create_runner_token("embedded", "local")
        .await
        .expect("token");
    let org = common::TestOrg {
        name: "embedded".into(),
        api: hub.api(&api_key),
        api_key,
        token_id: id.clone(),
        runner_api: hub.api(&token),
        runner_token: token,
    };
    let runner = org.register("r", &[]).await;
    let job = org.submit(&[]).await;
    assert_eq!(
        org.acquire(&runner, 0)
            .await
            .map(|j| j.job_id.into_string()),
        Some(job)
    );
    let listed = hub.hub.list_runner_tokens("embedded").await.expect("list");
    assert_eq!(listed.len(), 1);
    hub.hub
        .revoke_runner_token("embedded", &id)
        .await
        .expect("revoke");
    org.runner_api
        .post_json(
            paths::ACQUIRE,
            &serde_json::json!({"runner_id": runner, "free_slots": 1, "wait_s": 0}),
        )
        .await
        .expect_error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized);
    assert!(matches!(
        hub.hub.create_org("embedded").await,
        Err(outpost_hub::HubError::OrgExists { .. })
    ));
    assert!(matches!(
        hub.hub.create_runner_token("nobody", "").await,
        Err(outpost_hub::HubError::OrgNotFound { .. })
    ));
}

#[tokio::test]
async fn tls_serves_http1_and_http2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let hub = TestHub::start(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
    })
    .await;
    assert!(hub.hub.tls_enabled());
    let addr = hub.url.trim_start_matches("http://").to_owned();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    for alpn in [b"http/1.1".to_vec(), b"h2".to_vec()] {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.clone()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.expect("tls handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&alpn[..]));
        let io = hyper_util::rt::TokioIo::new(tls);
        let request = http::Request::builder()
            .uri(format!("https://localhost{}", paths::HEALTHZ))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = if alpn == b"h2" {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .expect("h2 handshake");
            let driver = tokio::spawn(conn);
            let response = send.send_request(request).await.expect("h2 request");
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            driver.abort();
            body
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("h1 handshake");
            let driver = tokio::spawn(conn);
            let request = {
                let (mut parts, body) = request.into_parts();
                parts.uri = paths::HEALTHZ.parse().expect("uri");
                parts
                    .headers
                    .insert(http::header::HOST, "localhost".parse().expect("host"));
                http::Request::from_parts(parts, body)
            };
            let response = send.send_request(request).await.expect("h1 request");
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            driver.abort();
            body
        };
        assert_eq!(&response[..], b"ok");
    }
}

/// An organization named under the rule before lowercase RFC 1123 labels (here written into the
/// store directly, as an older hub did) keeps working: its key, its tokens, its runners, its jobs.
#[tokio::test]
async fn an_organization_named_under_the_older_rule_keeps_working() {
    use outpost_hub::store::{SqliteStore, Store};

    let hub = TestHub::start(|_| {}).await;
    let db = hub.db();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&db))
        .await
        .expect("task")
        .expect("open the store");
    let api_key = "opk_legacy_key_of_an_older_hub";
    let hash: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(api_key.as_bytes()).into()
    };
    store
        .create_org(
            "Legacy.Org_1".into(),
            hash,
            outpost_protocol::Timestamp::now(),
        )
        .await
        .expect("an org under the older rule");
    let org = hub.api(api_key);
    let token: outpost_protocol::CreateRunnerTokenResponse = org
        .post_json(
            &paths::runner_tokens("Legacy.Org_1"),
            &serde_json::json!({"description": "old"}),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .json();
    let legacy = common::TestOrg {
        name: "Legacy.Org_1".into(),
        api: org,
        api_key: api_key.into(),
        token_id: token.id,
        runner_api: hub.api(&token.token),
        runner_token: token.token,
    };
    let runner = legacy.register("r", &[]).await;
    let job = legacy.submit(&[]).await;
    assert_eq!(
        legacy
            .acquire(&runner, 0)
            .await
            .map(|j| j.job_id.into_string()),
        Some(job)
    );
    // The same name is still refused for a new organization.
    hub.admin()
        .post_json(paths::ORGS, &serde_json::json!({"name": "Legacy.Org_2"}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Unprocessable);
}
