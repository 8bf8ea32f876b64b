//! `cargo xtask test-images`: builds the Docker images the tests use, on this machine and without
//! any registry (none is reachable here): a root filesystem made of Debian's static busybox,
//! imported with `docker import`. Idempotent: an image whose content label matches is kept.
//!
//! Images (keep in step with the tests' constants, e.g. `crates/outpost-docker/tests/common`):
//! - [`BUSYBOX`]: busybox applets in `/bin` (`sh`, `nc`, `head`, `sleep`, …), `/tmp`, a minimal
//!   `/etc/passwd`; default command `sh`.
//! - [`TCP_ECHO`]: the same filesystem whose default command is a TCP echo server on port 7000
//!   (`nc -ll -p 7000 -e cat`: busybox's `nc` has no `-k`; `-ll` keeps listening).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// A small image with a POSIX shell and the busybox tools.
pub const BUSYBOX: &str = "outpost-test/busybox:1";
/// A service image: TCP echo server on port 7000.
pub const TCP_ECHO: &str = "outpost-test/tcp-echo:1";
/// The TCP port [`TCP_ECHO`] listens on.
pub const TCP_ECHO_PORT: u16 = 7000;

/// Label holding what an image was built from; a different value means rebuild.
const CONTENT_LABEL: &str = "outpost.test-image";
/// Bump when the recipe below changes.
const RECIPE: &str = "1";
/// Overrides where the static busybox binary is taken from (non-Debian hosts).
const BUSYBOX_ENV: &str = "OUTPOST_BUSYBOX";

struct Image {
    tag: &'static str,
    cmd: &'static str,
}

const IMAGES: [Image; 2] = [
    Image {
        tag: BUSYBOX,
        cmd: r#"CMD ["/bin/sh"]"#,
    },
    Image {
        tag: TCP_ECHO,
        cmd: r#"CMD ["/bin/nc", "-ll", "-p", "7000", "-e", "/bin/cat"]"#,
    },
];

/// Builds the missing or outdated test images.
pub fn run() -> anyhow::Result<()> {
    docker_reachable()?;
    let busybox = static_busybox()?;
    let version = busybox_version(&busybox)?;
    let content = format!("recipe-{RECIPE} {version}");
    let outdated: Vec<&Image> = IMAGES
        .iter()
        .filter(|i| image_label(i.tag).as_deref() != Some(content.as_str()))
        .collect();
    if outdated.is_empty() {
        println!(
            "test images up to date: {BUSYBOX}, {TCP_ECHO} (echo on port {TCP_ECHO_PORT}) \
             ({content})"
        );
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let rootfs = tmp.0.join("rootfs");
    make_rootfs(&busybox, &rootfs)?;
    let archive = tmp.0.join("rootfs.tar");
    let status = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .context("cannot run `tar`")?;
    if !status.success() {
        bail!("`tar` failed to archive {} ({status})", rootfs.display());
    }
    for image in outdated {
        let out = Command::new("docker")
            .arg("import")
            .args(["-c", &format!("LABEL {CONTENT_LABEL}=\"{content}\"")])
            .args(["-c", "ENV PATH=/bin:/usr/bin:/sbin:/usr/sbin"])
            .args(["-c", image.cmd])
            .arg(&archive)
            .arg(image.tag)
            .output()
            .context("cannot run `docker import`")?;
        if !out.status.success() {
            bail!(
                "`docker import` of {} failed: {}",
                image.tag,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        println!("built {} ({content})", image.tag);
    }
    smoke_test()?;
    Ok(())
}

fn docker_reachable() -> anyhow::Result<()> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
        .context("docker is not reachable: cannot run the `docker` command (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "docker is not reachable: {} (start the engine, or set DOCKER_HOST)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The `outpost.test-image` label of `tag`, if the image exists.
fn image_label(tag: &str) -> Option<String> {
    let format = format!("{{{{index .Config.Labels \"{CONTENT_LABEL}\"}}}}");
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", &format, tag])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The static busybox: `$OUTPOST_BUSYBOX`, else Debian's `busybox-static` (installed with apt-get
/// when missing).
fn static_busybox() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(BUSYBOX_ENV) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{BUSYBOX_ENV}={} is not a file", p.display());
        }
        return Ok(p);
    }
    if let Some(p) = dpkg_busybox() {
        return Ok(p);
    }
    println!("installing Debian's busybox-static with apt-get");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "busybox-static"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let ok = install().is_ok_and(|s| s.success()) || {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        install().is_ok_and(|s| s.success())
    };
    if !ok {
        bail!(
            "cannot install busybox-static with apt-get (not root, or not Debian?); install it, or \
             set {BUSYBOX_ENV} to a statically linked busybox"
        );
    }
    dpkg_busybox().context("busybox-static is installed but dpkg lists no busybox binary")
}

fn dpkg_busybox() -> Option<PathBuf> {
    let out = Command::new("dpkg")
        .args(["-L", "busybox-static"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .find(|p| p.ends_with("bin/busybox") && p.is_file())
}

/// `BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1)`: the first line of its banner.
fn busybox_version(busybox: &Path) -> anyhow::Result<String> {
    let out = Command::new(busybox)
        .output()
        .with_context(|| format!("cannot run {}", busybox.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_default();
    let version = line.trim_end_matches(" multi-call binary.").trim();
    if !version.starts_with("BusyBox") {
        bail!("{} does not look like busybox: `{line}`", busybox.display());
    }
    Ok(version.to_owned())
}

fn make_rootfs(busybox: &Path, root: &Path) -> anyhow::Result<()> {
    let bin = root.join("bin");
    for dir in ["bin", "etc", "root", "usr", "var/tmp"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy(busybox, bin.join("busybox"))
        .with_context(|| format!("cannot copy {}", busybox.display()))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .context("cannot list the busybox applets")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    for (link, target) in [
        ("usr/bin", "../bin"),
        ("sbin", "bin"),
        ("usr/sbin", "../bin"),
    ] {
        std::os::unix::fs::symlink(target, root.join(link))?;
    }
    let tmp = root.join("tmp");
    std::fs::create_dir(&tmp)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}

/// Runs the new image once, so a broken busybox (a dynamic one, say) shows here and not in the
/// tests.
fn smoke_test() -> anyhow::Result<()> {
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "none", BUSYBOX])
        .args(["sh", "-c", "echo ok"])
        .output()
        .context("cannot run `docker run`")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout.trim() != "ok" {
        bail!(
            "the new image {BUSYBOX} does not run `sh -c 'echo ok'`: {}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "outpost-test-images-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
