//! The hub's job log files (`<database>.logs/<org id>/<job id>.log`) with the real binary: a
//! torn tail that a crash left past the committed length is cut back after a restart, a follower
//! reads a multi-MiB log from the file while it grows and stops when the job ends, retention
//! deletes finished jobs with their files, and a file whose job is gone is removed at start.

use std::path::{Path, PathBuf};

use outpost_e2e::{PROMPTLY, org_with_runner, running_job};
use outpost_protocol::{ErrorCode, JobResult, paths};
use outpost_testkit::{TestHub, TestRunner, wait_until};

/// The hub's log folder: `<database>.logs`.
fn logs_dir(hub: &TestHub) -> PathBuf {
    let mut name = hub.database_path().as_os_str().to_owned();
    name.push(".logs");
    PathBuf::from(name)
}

/// The log file of `job_id`, found in whichever org folder holds it.
fn log_file(hub: &TestHub, job_id: &str) -> PathBuf {
    let dir = logs_dir(hub);
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("folder entry")
                .path()
                .join(format!("{job_id}.log"))
        })
        .filter(|path| path.is_file())
        .collect();
    assert_eq!(found.len(), 1, "log files of {job_id}: {found:?}");
    found.into_iter().next().expect("one file")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[tokio::test]
async fn a_torn_tail_past_the_committed_length_is_cut_back_after_a_kill() {
    let mut hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = running_job(&hub, &org, &runner).await;
    assert_eq!(runner.append_log_ok(&job, 0, "acknowledged\n").await, 13);
    let file = log_file(&hub, job.job_id.as_str());
    assert_eq!(read(&file), b"acknowledged\n");

    hub.kill().await;
    // What a kill between an append's write and its commit leaves: bytes past the committed
    // length, longer than the next append.
    let mut torn = read(&file);
    torn.extend_from_slice(&[b'#'; 100]);
    std::fs::write(&file, &torn).expect("write the torn tail");
    hub.restart().await;

    assert_eq!(hub.log(&org, job.job_id.as_str()).await, b"acknowledged\n");
    assert_eq!(hub.job(&org, job.job_id.as_str()).await.log_bytes, 13);
    let gap = runner.append_log(&job, 113, "x").await;
    assert_eq!(gap.expect_error(409, ErrorCode::LogGap).committed, Some(13));
    assert_eq!(runner.append_log_ok(&job, 13, "after\n").await, 19);
    assert_eq!(
        read(&file),
        b"acknowledged\nafter\n",
        "the torn tail was not cut off"
    );
    let done = TestRunner::completion(&job, JobResult::Success, None, 19);
    runner.complete(&job.job_id, &done).await.expect(200);
    assert_eq!(
        hub.log(&org, job.job_id.as_str()).await,
        b"acknowledged\nafter\n"
    );
}

/// `len` bytes of a log that shows where every byte sits: line `i` is `line i\n`, padded.
fn big_log(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("{i:09} build output of the big job\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

#[tokio::test]
async fn a_follower_reads_a_growing_log_from_the_file_and_stops_with_the_job() {
    const PIECE: usize = 256 * 1024;
    // Over the hub's 1 MiB read piece, so the file is read in several pieces.
    let expected = big_log(3 * 1024 * 1024 + 12_345);
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = running_job(&hub, &org, &runner).await;
    let mut follow = hub
        .as_org(&org)
        .get_streaming(&paths::job_log_read(
            &org.name,
            job.job_id.as_str(),
            0,
            true,
        ))
        .await;
    assert_eq!(follow.status.as_u16(), 200, "{follow:?}");
    for (i, piece) in expected.chunks(PIECE).enumerate() {
        let offset = (i * PIECE) as u64;
        let committed = runner.append_log_ok(&job, offset, piece.to_vec()).await;
        assert_eq!(committed, offset + piece.len() as u64);
        // Each appended piece reaches the follower before the next one is sent.
        follow
            .read_until_len(usize::try_from(committed).expect("small"), PROMPTLY)
            .await;
    }
    assert_eq!(read(&log_file(&hub, job.job_id.as_str())), expected);
    let done = TestRunner::completion(&job, JobResult::Success, None, expected.len() as u64);
    runner.complete(&job.job_id, &done).await.expect(200);
    assert_eq!(follow.read_to_end(PROMPTLY).await, expected);

    // A follower that comes after the end gets everything (several file reads) and stops.
    let mut late = hub
        .as_org(&org)
        .get_streaming(&paths::job_log_read(
            &org.name,
            job.job_id.as_str(),
            7,
            true,
        ))
        .await;
    assert_eq!(late.read_to_end(PROMPTLY).await, &expected[7..]);
    let from = 1024 * 1024 + 3;
    let answer = hub
        .as_org(&org)
        .get(&paths::job_log_read(
            &org.name,
            job.job_id.as_str(),
            from as u64,
            false,
        ))
        .await;
    assert_eq!(&answer.expect(200).body[..], &expected[from..]);
}

#[tokio::test]
async fn retention_deletes_finished_jobs_with_their_files_and_keeps_unfinished_ones() {
    let hub = TestHub::builder()
        .env("OUTPOST_HUB_JOB_RETENTION", "1s")
        .start()
        .await;
    let (org, runner) = org_with_runner(&hub).await;
    let finished = running_job(&hub, &org, &runner).await;
    runner.append_log_ok(&finished, 0, "finished\n").await;
    let done = TestRunner::completion(&finished, JobResult::Success, None, 9);
    runner.complete(&finished.job_id, &done).await.expect(200);
    let finished_file = log_file(&hub, finished.job_id.as_str());
    let unfinished = running_job(&hub, &org, &runner).await;
    runner
        .append_log_ok(&unfinished, 0, "still running\n")
        .await;
    let unfinished_file = log_file(&hub, unfinished.job_id.as_str());

    let path = paths::job(&org.name, finished.job_id.as_str());
    wait_until("the finished job is deleted", PROMPTLY, || {
        let (api, path) = (hub.as_org(&org), path.clone());
        async move { api.get(&path).await.code() == 404 }
    })
    .await;
    assert!(
        !finished_file.exists(),
        "the deleted job's log file is still there"
    );
    let log = hub
        .as_org(&org)
        .get(&paths::job_log_read(
            &org.name,
            finished.job_id.as_str(),
            0,
            false,
        ))
        .await;
    log.expect_error(404, ErrorCode::NotFound);

    // The unfinished job outlived that sweep (and any after it) with its log; once it ends,
    // it goes the same way.
    assert_eq!(
        hub.log(&org, unfinished.job_id.as_str()).await,
        b"still running\n"
    );
    assert_eq!(read(&unfinished_file), b"still running\n");
    let done = TestRunner::completion(&unfinished, JobResult::Success, None, 14);
    runner.complete(&unfinished.job_id, &done).await.expect(200);
    wait_until("the job that ended later is deleted", PROMPTLY, || {
        std::future::ready(!unfinished_file.exists())
    })
    .await;
    hub.as_org(&org)
        .get(&paths::job(&org.name, unfinished.job_id.as_str()))
        .await
        .expect(404);
}

#[tokio::test]
async fn a_log_file_whose_job_is_gone_is_removed_at_start() {
    let mut hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = running_job(&hub, &org, &runner).await;
    runner.append_log_ok(&job, 0, "kept\n").await;
    let kept = log_file(&hub, job.job_id.as_str());
    hub.kill().await;
    // What a crash between deleting a job's rows and removing its file leaves behind.
    let orphan = kept.with_file_name("j_00000000000000000000.log");
    std::fs::write(&orphan, b"deleted job").expect("write the orphan");
    let other_org = logs_dir(&hub).join("999999");
    std::fs::create_dir(&other_org).expect("mkdir");
    let foreign = other_org.join(format!("{}.log", job.job_id));
    std::fs::write(&foreign, b"same id, no such org").expect("write");
    let unrelated = logs_dir(&hub).join("notes.txt");
    std::fs::write(&unrelated, b"not a log").expect("write");
    hub.restart().await;

    wait_until("the orphaned log files are removed", PROMPTLY, || {
        std::future::ready(!orphan.exists() && !foreign.exists())
    })
    .await;
    assert!(
        unrelated.exists(),
        "a file the hub did not name was removed"
    );
    assert_eq!(read(&kept), b"kept\n");
    assert_eq!(hub.log(&org, job.job_id.as_str()).await, b"kept\n");
}
