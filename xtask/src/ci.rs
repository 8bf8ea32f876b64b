//! `cargo xtask ci`: the one test command. Runs, in order, and stops at the first failure:
//! format check, clippy with warnings denied, a build of the binaries (the end-to-end tests start
//! them as processes), the local Docker test images, the whole test suite under nextest, and the
//! dependency policy (`cargo deny check bans licenses sources`).

use std::process::Command;

use anyhow::{Context, bail};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let skip_deny = args.iter().any(|a| a == "--no-deny");
    step("format", crate::cargo(&["fmt", "--all", "--check"]))?;
    step(
        "clippy",
        crate::cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "build binaries",
        crate::cargo(&["build", "--workspace", "--bins", "--locked"]),
    )?;
    test_images()?;
    step(
        "tests",
        crate::cargo(&[
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
        ]),
    )?;
    deploy_checks()?;
    if skip_deny {
        println!("xtask ci: dependency policy skipped (--no-deny)");
    } else {
        step(
            "dependency policy",
            crate::cargo(&["deny", "check", "bans", "licenses", "sources"]),
        )?;
    }
    println!("xtask ci: all checks passed");
    Ok(())
}

/// Builds the Docker test images and the deployment images when an engine answers. Without one,
/// the Docker tests print that they were skipped — unless `OUTPOST_REQUIRE_DOCKER=1` (set by
/// `.ci/run`), which makes a missing engine a failure here already.
fn test_images() -> anyhow::Result<()> {
    let engine = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    let reachable = matches!(&engine, Ok(out) if out.status.success());
    if !reachable {
        if std::env::var("OUTPOST_REQUIRE_DOCKER").as_deref() == Ok("1") {
            bail!(
                "OUTPOST_REQUIRE_DOCKER=1 but the docker engine is not reachable; start it or unset the variable"
            );
        }
        println!(
            "xtask ci: docker engine not reachable: test images not built, docker tests will be skipped"
        );
        return Ok(());
    }
    step("test images", crate::cargo(&["xtask", "test-images"]))?;
    // The deployment images for the compose test, from the debug binaries just built: the same
    // code as a release image, without a second (release) build of the workspace.
    step(
        "deployment images",
        crate::cargo(&["xtask", "images", "--profile", "dev", "--no-build"]),
    )
}

/// The Helm chart and the Kubernetes manifests (deploy/check.py: lint, offline render, strict
/// schema validation, drift of deploy/kubernetes, and the pod specs the k8s tests dumped, which is
/// why it runs after the tests). It makes its own virtualenv under the target directory.
fn deploy_checks() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?;
    if Command::new("python3").arg("--version").output().is_err() {
        bail!(
            "python3 not found: the deployment checks (deploy/check.py) need Python 3.11 or newer with venv and pip"
        );
    }
    let mut cmd = Command::new("python3");
    cmd.arg(root.join("deploy").join("check.py"))
        .current_dir(root);
    step("deployment checks", cmd)
}

fn step(name: &str, mut cmd: Command) -> anyhow::Result<()> {
    println!("xtask ci: {name}: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}
