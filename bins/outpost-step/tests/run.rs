//! `outpost-step run` as a process with real child processes: markers and exit codes, the skip
//! rules, waiting for the previous step, time limits, signal forwarding to the command's whole
//! process group, and markers that appear whole or not at all.

mod common;

use std::process::Stdio;

use common::{Lines, Markers, code, run, wait_exit, wait_until, wrapper};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Runs step 0 with `script` under `sh -c` and checks its exit code and marker.
#[track_caller]
fn check(extra: &[&str], script: &str, exit: i32, marker: &str) {
    let m = Markers::new();
    let mut args = vec!["run", "--index", "0", "--markers", m.arg()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let out = run(&args);
    assert_eq!(
        code(out.status),
        exit,
        "exit code of `{script}`; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(m.get(0).as_deref(), Some(marker), "marker of `{script}`");
}

#[test]
fn exit_codes_become_markers() {
    check(&[], "true", 0, "state=success exit=0\n");
    check(&[], "exit 3", 3, "state=failed exit=3\n");
    check(&[], "exit 255", 255, "state=failed exit=255\n");
    check(&[], "kill -KILL $$", 137, "state=failed exit=137\n");
    check(&[], "kill -TERM $$", 143, "state=failed exit=143\n");
    // A time limit that is not reached changes nothing.
    check(&["--timeout", "1h"], "exit 4", 4, "state=failed exit=4\n");
}

#[test]
fn the_termination_log_gets_the_marker_line_too() {
    let m = Markers::new();
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = dir.path().join("termination-log");
    let log_arg = log.to_str().expect("a UTF-8 path");
    let args = [
        "run",
        "--index",
        "0",
        "--markers",
        m.arg(),
        "--termination-log",
        log_arg,
        "--",
        "sh",
        "-c",
        "exit 3",
    ];
    let out = run(&args);
    assert_eq!(code(out.status), 3);
    assert_eq!(m.get(0).as_deref(), Some("state=failed exit=3\n"));
    assert_eq!(
        std::fs::read_to_string(&log).expect("the termination log"),
        "state=failed exit=3\n"
    );
}

#[test]
fn the_commands_output_is_inherited() {
    let m = Markers::new();
    let out = run(&[
        "run",
        "--index",
        "0",
        "--markers",
        m.arg(),
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
}

#[test]
fn the_command_starts_with_no_signal_blocked_and_its_own_process_group() {
    let m = Markers::new();
    // Not through `sh`, which may reset the mask itself: the program as exec'ed.
    let out = run(&[
        "run",
        "--index",
        "0",
        "--markers",
        m.arg(),
        "--",
        "cat",
        "/proc/self/status",
    ]);
    let status = String::from_utf8_lossy(&out.stdout);
    let blocked = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .map(str::trim);
    assert_eq!(blocked, Some("0000000000000000"), "{status}");
    let out = run(&[
        "run",
        "--index",
        "0",
        "--markers",
        m.arg(),
        "--",
        "sh",
        "-c",
        "echo $$; cut -d' ' -f5 /proc/$$/stat",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        lines[0], lines[1],
        "the command leads its own process group"
    );
}

#[test]
fn skip_rules_follow_the_shared_rule() {
    // (earlier markers, when, whether the command runs)
    let cases: &[(&[&str], &str, bool)] = &[
        (&["state=success exit=0"], "on_success", true),
        (&["state=success exit=0"], "on_failure", false),
        (&["state=success exit=0"], "always", true),
        (&["state=failed exit=1"], "on_success", false),
        (&["state=failed exit=1"], "on_failure", true),
        (&["state=failed exit=1"], "always", true),
        (&["state=timed_out exit=143"], "on_failure", true),
        (
            &["state=failed exit=1", "state=skipped"],
            "on_success",
            false,
        ),
        (
            &["state=failed exit=1", "state=skipped"],
            "on_failure",
            true,
        ),
        (
            &["state=skipped", "state=success exit=0"],
            "on_success",
            true,
        ),
        (&["state=cancelled exit=143"], "always", false),
        (&["state=cancelled"], "on_failure", false),
        (&["state=failed exit=2", "state=cancelled"], "always", false),
    ];
    for (earlier, when, runs) in cases {
        let m = Markers::new();
        for (i, text) in earlier.iter().enumerate() {
            m.put(i as u32, &format!("{text}\n"));
        }
        let index = earlier.len().to_string();
        let ran = m.path().join("ran");
        let script = format!("touch '{}'", ran.display());
        let out = run(&[
            "run",
            "--index",
            &index,
            "--markers",
            m.arg(),
            "--when",
            when,
            "--",
            "sh",
            "-c",
            &script,
        ]);
        let what = format!("{when} after {earlier:?}");
        assert_eq!(code(out.status), 0, "{what}");
        assert_eq!(ran.exists(), *runs, "whether it ran: {what}");
        let expected = if *runs {
            "state=success exit=0\n"
        } else {
            "state=skipped\n"
        };
        assert_eq!(
            m.get(earlier.len() as u32).as_deref(),
            Some(expected),
            "{what}"
        );
    }
}

#[test]
fn a_step_waits_for_the_previous_marker() {
    let m = Markers::new();
    m.put(0, "state=success exit=0\n");
    let ran = m.path().join("ran");
    let script = format!("touch '{}'", ran.display());
    let mut child = wrapper(&[
        "run",
        "--index",
        "2",
        "--markers",
        m.arg(),
        "--when",
        "on_failure",
        "--verbose",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .stderr(Stdio::piped())
    .spawn()
    .expect("the wrapper starts");
    let mut stderr = Lines::stderr(child.stderr.take().expect("piped"));
    let line = stderr.wait_for("waiting for");
    assert!(line.ends_with("1.done"), "{line}");
    // It is waiting: nothing ran, no marker, still alive.
    assert!(!ran.exists() && m.get(2).is_none());
    assert!(child.try_wait().expect("try_wait").is_none());
    m.put(1, "state=failed exit=9\n");
    let status = wait_exit(&mut child);
    assert_eq!(code(status), 0, "{:?}", stderr.rest());
    assert!(ran.exists(), "on_failure ran after step 1 failed");
    assert_eq!(m.get(2).as_deref(), Some("state=success exit=0\n"));
}

#[test]
fn a_time_limit_sends_sigterm_then_sigkill() {
    let timeout = ["--timeout", "100ms", "--grace", "100ms"];
    // Ends on SIGTERM.
    check(
        &timeout,
        "exec sleep 600",
        143,
        "state=timed_out exit=143\n",
    );
    // Traps SIGTERM and exits on its own: still a timeout, with the code it chose.
    check(
        &timeout,
        "trap 'exit 7' TERM; sleep 600 & wait",
        7,
        "state=timed_out exit=7\n",
    );
    // Ignores SIGTERM (and so does the sleep it starts): SIGKILL after the grace period.
    check(
        &timeout,
        "trap '' TERM; sleep 600",
        137,
        "state=timed_out exit=137\n",
    );
    // No grace: SIGKILL right after SIGTERM.
    check(
        &["--timeout", "100ms", "--grace", "0s"],
        "trap '' TERM; sleep 600",
        137,
        "state=timed_out exit=137\n",
    );
}

/// Whether process `pid` is gone (or a zombie, which no longer runs).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S …`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn sigterm_is_forwarded_to_the_whole_process_group() {
    let m = Markers::new();
    let mut child = wrapper(&[
        "run",
        "--index",
        "0",
        "--markers",
        m.arg(),
        "--grace",
        "1h",
        "--",
        "sh",
        "-c",
        "sleep 600 & echo $!; wait",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("the wrapper starts");
    let mut stdout = Lines::stdout(child.stdout.take().expect("piped"));
    let mut stderr = Lines::stderr(child.stderr.take().expect("piped"));
    let sleeper: i32 = stdout.wait_for("").trim().parse().expect("the sleep's pid");
    assert!(!gone(sleeper));
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGTERM).expect("signal sent");
    let status = wait_exit(&mut child);
    assert_eq!(code(status), 143, "{:?}", stderr.rest());
    assert_eq!(m.get(0).as_deref(), Some("state=cancelled exit=143\n"));
    // The background sleep was in the group too: it got SIGTERM, not just the shell.
    wait_until("the script's background sleep is gone", || gone(sleeper));
    assert!(
        stderr.rest().iter().any(|l| l.contains("received SIGTERM")),
        "the wrapper says why it stops the step"
    );
}

#[test]
fn what_the_script_leaves_running_ends_with_the_step() {
    let m = Markers::new();
    let out = run(&[
        "run",
        "--index",
        "0",
        "--markers",
        m.arg(),
        "--",
        "sh",
        "-c",
        "sleep 600 >/dev/null 2>&1 & echo $!",
    ]);
    assert_eq!(code(out.status), 0);
    let sleeper: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the sleep's pid");
    wait_until("the background sleep is gone", || gone(sleeper));
}

#[test]
fn a_second_signal_kills_at_once() {
    let m = Markers::new();
    let mut child = wrapper(&[
        "run",
        "--index",
        "0",
        "--markers",
        m.arg(),
        "--grace",
        "1h",
        "--",
        "sh",
        "-c",
        "trap '' TERM INT; echo ready; sleep 600",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("the wrapper starts");
    let mut stdout = Lines::stdout(child.stdout.take().expect("piped"));
    let mut stderr = Lines::stderr(child.stderr.take().expect("piped"));
    stdout.wait_for("ready");
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).expect("signal sent");
    stderr.wait_for("received SIGINT; stopping the step");
    kill(pid, Signal::SIGTERM).expect("signal sent");
    let status = wait_exit(&mut child);
    assert_eq!(code(status), 137, "{:?}", stderr.rest());
    assert_eq!(m.get(0).as_deref(), Some("state=cancelled exit=137\n"));
}

#[test]
fn a_signal_while_waiting_cancels_the_step_before_it_starts() {
    let m = Markers::new();
    let ran = m.path().join("ran");
    let script = format!("touch '{}'", ran.display());
    let mut child = wrapper(&[
        "run",
        "--index",
        "1",
        "--markers",
        m.arg(),
        "--when",
        "always",
        "--verbose",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .stderr(Stdio::piped())
    .spawn()
    .expect("the wrapper starts");
    let mut stderr = Lines::stderr(child.stderr.take().expect("piped"));
    stderr.wait_for("waiting for");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal sent");
    let status = wait_exit(&mut child);
    assert_eq!(code(status), 143, "{:?}", stderr.rest());
    assert_eq!(m.get(1).as_deref(), Some("state=cancelled\n"));
    assert!(!ran.exists());
}

#[test]
fn commands_that_cannot_run_fail_the_step_with_126_or_127() {
    let m = Markers::new();
    let out = run(&[
        "run",
        "--index",
        "0",
        "--markers",
        m.arg(),
        "--",
        "no-such-program-x",
    ]);
    assert_eq!(code(out.status), 127);
    assert_eq!(m.get(0).as_deref(), Some("state=failed exit=127\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot run `no-such-program-x`"),
        "{stderr}"
    );

    let script = m.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\ntrue\n").expect("script written");
    let out = run(&[
        "run",
        "--index",
        "0",
        "--markers",
        m.arg(),
        "--",
        script.to_str().expect("UTF-8"),
    ]);
    assert_eq!(code(out.status), 126);
    assert_eq!(m.get(0).as_deref(), Some("state=failed exit=126\n"));
}

#[test]
fn a_corrupt_earlier_marker_fails_the_step_and_names_the_file() {
    let m = Markers::new();
    m.put(0, "state=success exit=0\n");
    m.put(1, "finished!\n");
    let out = run(&["run", "--index", "2", "--markers", m.arg(), "--", "true"]);
    assert_eq!(code(out.status), 125);
    assert_eq!(m.get(2).as_deref(), Some("state=failed exit=125\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: invalid marker `finished!`",
            m.file(1).display()
        )),
        "{stderr}"
    );

    // A gap (step 0's marker missing although step 1's is there) is the same kind of error.
    let m = Markers::new();
    m.put(1, "state=success exit=0\n");
    let out = run(&["run", "--index", "2", "--markers", m.arg(), "--", "true"]);
    assert_eq!(code(out.status), 125);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot read the marker `{}`", m.file(0).display())),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2_and_write_no_marker() {
    let m = Markers::new();
    let out = run(&[
        "run",
        "--index",
        "0",
        "--markers",
        m.arg(),
        "--when",
        "later",
        "--",
        "true",
    ]);
    assert_eq!(code(out.status), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "outpost-step: `--when later`: expected `on_success`, `on_failure` or `always`\nusage:"
        ),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(m.path()).expect("listable").count(), 0);
}

/// Each marker file appears by a rename: the marker's own name is never created, written or
/// closed after writing, which is what a reader in another container could catch half-done.
#[test]
fn markers_appear_whole_by_rename() {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let m = Markers::new();
    m.put(0, "state=success exit=0\n");
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK).expect("inotify");
    inotify
        .add_watch(
            m.path(),
            AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO,
        )
        .expect("watch");
    let out = run(&[
        "run",
        "--index",
        "1",
        "--markers",
        m.arg(),
        "--",
        "sh",
        "-c",
        "exit 5",
    ]);
    assert_eq!(code(out.status), 5);
    let mut events = Vec::new();
    while let Ok(batch) = inotify.read_events() {
        if batch.is_empty() {
            break;
        }
        for e in batch {
            let name = e
                .name
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            events.push((name, e.mask));
        }
    }
    let on_marker: Vec<_> = events.iter().filter(|(n, _)| n == "1.done").collect();
    assert_eq!(
        on_marker,
        [&("1.done".to_owned(), AddWatchFlags::IN_MOVED_TO)],
        "all events: {events:?}"
    );
    assert!(
        events.iter().any(|(n, mask)| n.starts_with(".1.done.tmp-")
            && mask.contains(AddWatchFlags::IN_CLOSE_WRITE)),
        "the temporary file was written first: {events:?}"
    );
    assert_eq!(m.get(1).as_deref(), Some("state=failed exit=5\n"));
    let mut names: Vec<String> = std::fs::read_dir(m.path())
        .expect("listable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["0.done", "1.done"], "no temporary file is left");
}
