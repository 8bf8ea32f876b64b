//! A heartbeat held open while its token is revoked (issue 10, finding 4): the revocation ends
//! the hold at once and the answer is `401`, not a `200` that renews the leases.

use outpost_e2e::{assert_pending, assigned_job, woken};
use outpost_protocol::{ErrorCode, paths};
use outpost_testkit::{TestHub, TestRunner, held, unique};

#[tokio::test]
async fn a_heartbeat_held_while_its_token_is_revoked_answers_401() {
    // The hold (20 s) is far longer than `woken` waits: only the revocation can end it early.
    let hub = TestHub::builder().heartbeat_interval_s(20).start().await;
    let org = hub.create_org(&unique("org")).await;
    let token = hub.create_runner_token_with_id(&org, "revoked").await;
    let runner = TestRunner::register(hub.url(), &token.token, &unique("runner"), &[]).await;
    let job = assigned_job(&hub, &org, &runner).await;

    let beating = runner.clone();
    let lease = held(&job);
    let beat = tokio::spawn(async move { beating.heartbeat_response(&[lease], 20).await });
    assert_pending(&hub, &beat, "the held heartbeat").await;

    hub.as_org(&org)
        .delete(&paths::runner_token(&org.name, &token.id))
        .await
        .expect(204);
    let answer = woken(beat, "the heartbeat held across the revocation").await;
    answer.expect_error(401, ErrorCode::Unauthorized);

    // The token stays refused; nothing renewed the lease since (the hub's own test checks the
    // lease's expiry in the store).
    runner
        .heartbeat_response(&[held(&job)], 0)
        .await
        .expect_error(401, ErrorCode::Unauthorized);
}
