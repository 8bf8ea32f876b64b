//! `outpost-step`: the step wrapper inside outpost's Kubernetes job pods (Tekton's entrypoint
//! approach). The pod runs to its end on its own, even while the runner is away: an init
//! container copies this binary into a shared `emptyDir`, every step is a container whose
//! entrypoint is the copy, and the copies hand the job from step to step through marker files.
//! See docs/step-wrapper.md for how the Kubernetes backend uses it.
//!
//! # Subcommands
//!
//! ```text
//! outpost-step install <dir>
//! outpost-step receive <dir> [--marker <file>]
//! outpost-step run --index <n> --markers <dir> [--when on_success|on_failure|always]
//!                  [--timeout <duration>] [--grace <duration>] [--verbose]
//!                  -- <command> [<arg>...]
//! outpost-step help | version
//! ```
//!
//! (`_exec -- <command>…` is internal: how `run` starts the command, see below.)
//!
//! - **`install <dir>`** copies the running executable (`/proc/self/exe`) to
//!   `<dir>/outpost-step` with mode 0755, under a temporary name first and renamed, so that no
//!   step ever starts half a binary. Run by the pod's first init container, from the runner's
//!   image.
//! - **`receive <dir>`** extracts the tar stream on stdin into `<dir>` (created if missing): the
//!   runner attaches to this init container's stdin and streams the job's checkout, then closes
//!   it. ustar, GNU and pax archives; regular files, directories, symbolic and hard links, with
//!   their permission bits (0o777) and file mtimes, not their owners. Absolute paths, `..`
//!   components, writing through a symbolic link, devices and FIFOs are refused; a bad header
//!   checksum or a stream that ends early is an error naming the byte offset. With `--marker`,
//!   writes `state=success exit=0 entries=<n> bytes=<n>` to that file (atomically) at the end.
//! - **`run`** is one step:
//!   1. waits for the previous step's marker `<markers>/<n-1>.done` (step 0 waits for nothing),
//!      looking for it every 25 ms;
//!   2. reads the markers of all earlier steps and decides by `--when` (default `on_success`)
//!      with the rule every backend shares (`outpost_steprules::decide`): `on_success` runs while
//!      no earlier step failed or timed out, `on_failure` only once one has, `always` in both
//!      cases, and nothing runs after a cancelled step;
//!   3. a skipped step writes `state=skipped` at once and exits 0;
//!   4. otherwise runs `<command> [<arg>...]` as given (the program found on `PATH`; the backend
//!      passes `sh -c <script>`), in its own process group, stdin from `/dev/null`, stdout and
//!      stderr inherited (the container's log is the step's log);
//!   5. after `--timeout`, sends SIGTERM to the command's process group and SIGKILL after
//!      `--grace` (default 10s; `0s` kills at once); the step is `timed_out`;
//!   6. on SIGTERM or SIGINT (the pod being deleted on cancel) does the same; the step is
//!      `cancelled`; a second signal kills at once;
//!   7. when the command ends, SIGKILLs what it left running in its group (as the end of the
//!      container would), and writes `<markers>/<n>.done` atomically (a temporary file renamed
//!      into place).
//!
//!   A signal while still waiting writes `state=cancelled` (no exit code: the command never
//!   started) and exits with 128 + the signal.
//!
//! Durations are whole numbers with units `h`, `m`, `s`, `ms`, largest first: `90s`, `1m30s`,
//! `500ms`.
//!
//! # Markers
//!
//! One line, `key=value` fields separated by spaces (see `outpost_steprules::Marker`, which both
//! this wrapper and the runner use to read and write them):
//!
//! ```text
//! state=success exit=0       state=failed exit=3       state=timed_out exit=143
//! state=cancelled exit=143   state=cancelled           state=skipped
//! ```
//!
//! # Exit codes
//!
//! The command's exit code, or 128 + the signal that killed it; 0 for a skipped step; 127 when
//! the program is not found and 126 when it cannot be executed (the marker says `failed` with
//! that code); 125 when the wrapper itself failed around the step (an unreadable earlier marker,
//! say; the marker says `failed exit=125` when it can be written); 2 for a usage error (no
//! marker: the pod spec is wrong). Messages of the wrapper go to stderr, prefixed with
//! `outpost-step:`.
//!
//! # Signals, and why nix
//!
//! The wrapper is PID 1 of its container, and PID 1 ignores every signal it has no handler
//! for: without taking SIGTERM itself it would never pass a cancel on, and the kubelet would
//! SIGKILL it after the grace period, leaving no marker. Std can neither take a signal nor send
//! one to a process group, and the workspace forbids unsafe code, so the wrapper uses nix (the
//! workspace's own, features `signal` and `process`; statically linked like everything else),
//! through its safe functions only:
//!
//! - it blocks SIGTERM and SIGINT before starting any thread and takes them with `sigwait` in
//!   one thread: no handler to install (nix's `sigaction` is unsafe), and blocked signals reach
//!   PID 1 too;
//! - a blocked mask is inherited by children, though (std's `Command` keeps it, busybox's `sh`
//!   does not reset it), so the command is started through a trampoline: the wrapper spawns
//!   itself as `outpost-step _exec -- <command>…` in a new process group, and that process
//!   clears its signal mask and `exec`s the command (same pid, same group). `_exec` is internal;
//!   it costs one extra `exec` of this small binary;
//! - it signals the command's group with `killpg`, and reaps with `waitpid(-1)`, which also
//!   collects the orphans re-parented to PID 1.
//!
//! Spawning busybox's `kill` instead would have tied the wrapper to the step's image and still
//! left SIGTERM to PID 1 unanswered; `signal-hook` would have added two crates for what nix's
//! safe calls already do.
//!
//! # Building
//!
//! Std only otherwise, no async runtime, and statically linked so that it runs in an image that
//! has nothing but `sh`:
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" \
//!   cargo build --release --target x86_64-unknown-linux-gnu -p outpost-step
//! # → target/x86_64-unknown-linux-gnu/release/outpost-step (static-pie)
//! ```

mod atomic;
mod cli;
mod error;
mod install;
mod receive;
mod run;
mod tar;

use std::process::ExitCode;

use crate::cli::Command;

fn main() -> ExitCode {
    let code = match cli::parse(std::env::args_os().skip(1).collect()) {
        Ok(Command::Install { dir }) => match install::install(&dir) {
            Ok(path) => {
                eprintln!("outpost-step: installed {}", path.display());
                0
            }
            Err(e) => fail(&e),
        },
        Ok(Command::Receive { dir, marker }) => receive(&dir, marker.as_deref()),
        Ok(Command::Run(args)) => run::run(&args),
        Ok(Command::Exec { command }) => fail(&run::exec(&command)),
        Ok(Command::Help) => {
            println!("{}", cli::USAGE);
            0
        }
        Ok(Command::Version) => {
            println!("outpost-step {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Err(e) => {
            eprintln!("outpost-step: {e}\n{}", cli::USAGE);
            e.exit_code()
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}

fn receive(dir: &std::path::Path, marker: Option<&std::path::Path>) -> i32 {
    let summary = match receive::extract(std::io::stdin().lock(), dir) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    eprintln!(
        "outpost-step: received {} entries ({} bytes) into {}",
        summary.entries,
        summary.bytes,
        dir.display()
    );
    if let Some(path) = marker {
        let text = format!(
            "state=success exit=0 entries={} bytes={}\n",
            summary.entries, summary.bytes
        );
        // The markers directory of the steps, which may not exist yet in a fresh volume.
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && let Err(e) = std::fs::create_dir_all(parent)
        {
            return fail(&error::Error::io("create directory", parent, e));
        }
        if let Err(e) = atomic::write(path, text.as_bytes()) {
            return fail(&e);
        }
    }
    0
}

fn fail(e: &error::Error) -> i32 {
    eprintln!("outpost-step: {e}");
    e.exit_code()
}
