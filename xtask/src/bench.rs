//! `cargo xtask bench`: builds the measurement binary `outpost-bench`, the hub and the runners
//! with `--release`, and runs it with the given options (`cargo xtask bench --help`). The
//! measurements themselves live in crates/outpost-bench, so that this task runner stays free of
//! the HTTP stack.

use std::process::Command;

use anyhow::{Context, bail};

/// Built with `--release` before measuring: the bench and the binaries it starts as processes.
const RELEASE_PACKAGES: &[&str] = &[
    "outpost-bench",
    "outpost-hub-bin",
    "runner-process",
    "runner-docker",
];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut build = crate::cargo(&["build", "--release"]);
    for p in RELEASE_PACKAGES {
        build.args(["-p", p]);
    }
    eprintln!(
        "xtask bench: cargo build --release -p {}",
        RELEASE_PACKAGES.join(" -p ")
    );
    let status = build.status().context("cannot run cargo build")?;
    if !status.success() {
        bail!("the release build failed ({status})");
    }
    let release = crate::images::Metadata::load()?.target_dir.join("release");
    let bench = release.join("outpost-bench");
    let status = Command::new(&bench)
        .args(args)
        .env("OUTPOST_BENCH_BIN_DIR", &release)
        .status()
        .with_context(|| format!("cannot run {}", bench.display()))?;
    if !status.success() {
        bail!("{} ended with {status}", bench.display());
    }
    Ok(())
}
