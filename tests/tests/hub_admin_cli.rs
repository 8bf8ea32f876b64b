//! The hub's admin subcommands, run as the real binary: against a running hub (`--hub URL` with
//! the admin key) and straight on its database file; what they create is what the API shows.

use std::process::Command;

use outpost_protocol::{RunnerTokenList, paths};
use outpost_testkit::{TestHub, bin_path, unique};

fn cli(hub: &TestHub, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin_path("outpost-hub"))
        .args(args)
        .env("OUTPOST_HUB_ADMIN_KEY", hub.admin_key())
        .output()
        .expect("outpost-hub runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn admin_subcommands_work_against_a_running_hub_and_on_the_database() {
    let hub = TestHub::start().await;
    let org = unique("cli");

    let (ok, api_key, err) = cli(&hub, &["org", "create", &org, "--hub", hub.url()]);
    assert!(ok, "{err}");
    assert!(
        api_key.starts_with("opk_"),
        "the API key alone on stdout: {api_key:?}"
    );
    assert!(err.contains("cannot be shown again"), "{err}");

    let (ok, token, err) = cli(
        &hub,
        &[
            "token",
            "create",
            "--org",
            &org,
            "--description",
            "over http",
            "--hub",
            hub.url(),
        ],
    );
    assert!(ok, "{err}");
    assert!(token.starts_with("oprt_"), "{token:?}");

    // The same database, through the file instead of the API.
    let db = hub.database_path().display().to_string();
    let (ok, _, err) = cli(
        &hub,
        &[
            "token",
            "create",
            "--org",
            &org,
            "--description",
            "on the file",
            "--database",
            &db,
        ],
    );
    assert!(ok, "{err}");

    // The org's own key sees both tokens, never their values.
    let listed: RunnerTokenList = hub
        .http()
        .bearer(&api_key)
        .get(&paths::runner_tokens(&org))
        .await
        .json();
    let mut descriptions: Vec<&str> = listed
        .tokens
        .iter()
        .map(|t| t.description.as_str())
        .collect();
    descriptions.sort_unstable();
    assert_eq!(descriptions, ["on the file", "over http"]);

    let (ok, table, err) = cli(&hub, &["token", "list", "--org", &org, "--hub", hub.url()]);
    assert!(ok, "{err}");
    assert!(
        table.contains("over http") && table.contains("on the file"),
        "{table}"
    );
    assert!(!table.contains(&token), "a listing never shows a token");

    // Revoke over HTTP; the token is refused from then on.
    let id = listed
        .tokens
        .iter()
        .find(|t| t.description == "over http")
        .map(|t| t.id.clone())
        .expect("listed");
    let (ok, _, err) = cli(
        &hub,
        &["token", "revoke", "--org", &org, &id, "--hub", hub.url()],
    );
    assert!(ok, "{err}");
    let refused = hub
        .http()
        .bearer(&token)
        .post_json(
            paths::REGISTER,
            &serde_json::json!({"name": "r", "executor": "process", "version": "0", "capacity": 1}),
        )
        .await;
    assert_eq!(refused.status.as_u16(), 401);

    // A missing org names itself; without the admin key --hub says what it needs.
    let (ok, _, err) = cli(
        &hub,
        &["token", "list", "--org", "no-such-org", "--hub", hub.url()],
    );
    assert!(!ok && err.contains("no-such-org"), "{err}");
    let out = Command::new(bin_path("outpost-hub"))
        .args(["token", "list", "--org", &org, "--hub", hub.url()])
        .env_remove("OUTPOST_HUB_ADMIN_KEY")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("OUTPOST_HUB_ADMIN_KEY"));
}
