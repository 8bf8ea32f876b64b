//! Project tasks, run as `cargo xtask <task>`:
//! - `ci`: everything CI checks (format, lints, tests, dependency policy), in that order.
//! - `test-images`: builds the Docker images the tests use, locally (no registry needed).
//! - `images`: builds the deployment images `outpost/hub:dev` and `outpost/runner-docker:dev`.
//! - `bench`: measures the DESIGN.md §7 figures and prints them beside their targets.

mod bench;
mod ci;
mod images;
mod test_images;

use std::process::Command;

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next();
    let rest: Vec<String> = args.collect();
    match task.as_deref() {
        Some("ci") => ci::run(&rest),
        Some("bench") => bench::run(&rest),
        Some("test-images") => test_images::run(),
        Some("images") => images::run(&rest),
        Some("-h" | "--help") | None => {
            println!(
                "usage: cargo xtask <task>\n\ntasks:\n  ci           format, lints, tests, dependency policy (what CI runs)\n  test-images  build the local Docker test images\n  images       build the deployment images (outpost/hub, outpost/runner-docker)\n  bench        measure and print the DESIGN.md §7 figures"
            );
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}` (try `cargo xtask --help`)"),
    }
}

/// `cargo` (the one running this task, when known) with `args`.
fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args);
    cmd
}
