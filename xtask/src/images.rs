//! `cargo xtask images`: builds the deployment images [`HUB`] and [`RUNNER_DOCKER`] on this
//! machine, with no registry (none is reachable here, so both start `FROM scratch`).
//!
//! 1. `cargo build --release --locked` of the hub, runner-docker and the CLI (`--profile dev`
//!    takes the debug binaries instead: what `cargo build --bins` already built, faster in CI).
//! 2. For each image, a root filesystem under `<target>/images/<name>/rootfs/`: the binaries
//!    (debug info stripped, symbols kept), every shared library `ldd` names with the dynamic
//!    loader, a static busybox with its applets in `/bin`, the host's CA bundle, `/etc/passwd`,
//!    `/etc/group` and `/etc/nsswitch.conf`, `/tmp`, and the directories the service writes to.
//!    The runner image also gets the host's `git` with its HTTP(S) transport helper, whose
//!    libraries come along the same way.
//! 3. `docker build -f deploy/<name>.Dockerfile <target>/images/<name>`, labelled with a hash of
//!    the context; an image whose label matches is kept, so a re-run builds nothing (`--force`
//!    rebuilds). A new image is smoke-tested: every binary's `--version`, the hub's health check
//!    against `serve`, a `git clone` in the runner's.
//!
//! Host requirements: a glibc Linux with `ldd`, `strip` (optional: binaries are copied whole
//! without it), Debian's `busybox-static` (or `OUTPOST_BUSYBOX`), and git (`OUTPOST_GIT` picks
//! another one than the first on `PATH`).

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

/// The hub image: `outpost-hub serve` on port 8080, database in the volume `/data`.
pub const HUB: &str = "outpost/hub:dev";
/// The Docker runner image: `runner-docker`, state in the volume `/var/lib/outpost`.
pub const RUNNER_DOCKER: &str = "outpost/runner-docker:dev";

/// Label holding the hash of what an image was built from; a different value means rebuild.
const CONTENT_LABEL: &str = "outpost.image-content";
/// Overrides where the static busybox binary is taken from (non-Debian hosts).
const BUSYBOX_ENV: &str = "OUTPOST_BUSYBOX";
/// Overrides which git goes into the runner image.
const GIT_ENV: &str = "OUTPOST_GIT";
/// The packages whose binaries go into the images.
const PACKAGES: &[&str] = &["outpost-hub-bin", "runner-docker", "outpost"];
/// The host's CA bundle (Debian's `ca-certificates`), at the same path in the images.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

struct Image {
    /// Directory under `<target>/images/` and stem of `deploy/<name>.Dockerfile`.
    name: &'static str,
    tag: &'static str,
    /// Release binaries copied to `/usr/local/bin`.
    binaries: &'static [&'static str],
    /// Whether git goes in.
    git: bool,
    /// Directories created empty, with their mode (ownership is the Dockerfile's `RUN chown`).
    dirs: &'static [(&'static str, u32)],
    /// A shell command starting the service alone, for the smoke test to run the image's
    /// health check against; `None` when it needs a peer (the runner needs a hub).
    serve: Option<&'static str>,
}

const IMAGES: [Image; 2] = [
    Image {
        name: "hub",
        tag: HUB,
        binaries: &["outpost-hub", "outpost"],
        git: false,
        dirs: &[("data", 0o700), ("shared", 0o700)],
        serve: Some("outpost-hub serve"),
    },
    Image {
        name: "runner-docker",
        tag: RUNNER_DOCKER,
        binaries: &["runner-docker"],
        git: true,
        dirs: &[("var/lib/outpost", 0o700), ("shared", 0o700)],
        serve: None,
    },
];

/// Builds the missing or outdated deployment images.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut force = false;
    let mut build = true;
    let mut profile = "release".to_owned();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--force" => force = true,
            "--no-build" => build = false,
            "--profile" => {
                profile = args
                    .next()
                    .context("--profile needs a cargo profile name (release, dev)")?
                    .clone();
            }
            "-h" | "--help" => {
                println!(
                    "usage: cargo xtask images [--force] [--no-build] [--profile NAME]\n\n\
                     builds {HUB} and {RUNNER_DOCKER} on this machine\n  \
                     --force           rebuild the images even when their content is unchanged\n  \
                     --no-build        take the binaries as they are (no cargo build)\n  \
                     --profile NAME    the cargo profile of the binaries (default release; `dev` \
                     reuses what `cargo build --bins` built)"
                );
                return Ok(());
            }
            other => bail!("unknown argument `{other}` (try `cargo xtask images --help`)"),
        }
    }
    let started = Instant::now();
    docker_reachable()?;
    let meta = Metadata::load()?;
    if build {
        build_binaries(&profile)?;
    }
    // Cargo's output directory of a profile: `dev` builds into `debug`.
    let bin_dir = meta
        .target_dir
        .join(if profile == "dev" { "debug" } else { &profile });
    let busybox = static_busybox()?;
    let git = Git::find()?;
    let deploy = workspace_root().join("deploy");
    for image in &IMAGES {
        let context = meta.target_dir.join("images").join(image.name);
        let dockerfile = deploy.join(format!("{}.Dockerfile", image.name));
        let dockerfile_text = std::fs::read(&dockerfile)
            .with_context(|| format!("cannot read {}", dockerfile.display()))?;
        let rootfs = context.join("rootfs");
        assemble(
            image,
            &rootfs,
            &bin_dir,
            &busybox,
            image.git.then_some(&git),
        )?;
        let content = content_hash(&rootfs, &dockerfile_text, &meta.version)?;
        let existing = image_inspect(image.tag);
        if !force
            && existing
                .as_ref()
                .is_some_and(|(_, label)| *label == content)
        {
            println!("{} up to date ({CONTENT_LABEL}={content})", image.tag);
            continue;
        }
        docker_build(image, &dockerfile, &context, &content, &meta.version)?;
        smoke_test(image)?;
        if let Some((old_id, _)) = existing {
            remove_if_dangling(&old_id);
        }
        println!("built {} ({CONTENT_LABEL}={content})", image.tag);
    }
    println!(
        "images ready in {:.1} s: {HUB}, {RUNNER_DOCKER}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// What `cargo metadata` tells about the workspace.
pub(crate) struct Metadata {
    /// `CARGO_TARGET_DIR`, the config's `build.target-dir`, or `<root>/target`.
    pub(crate) target_dir: PathBuf,
    /// The hub's package version, for the `org.opencontainers.image.version` label.
    version: String,
}

impl Metadata {
    pub(crate) fn load() -> anyhow::Result<Self> {
        let out = crate::cargo(&["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(workspace_root())
            .output()
            .context("cannot run `cargo metadata`")?;
        if !out.status.success() {
            bail!(
                "`cargo metadata` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("`cargo metadata` printed invalid JSON")?;
        let target_dir = meta["target_directory"]
            .as_str()
            .context("`cargo metadata` printed no target_directory")?;
        let version = meta["packages"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "outpost-hub-bin"))
            .and_then(|p| p["version"].as_str())
            .context("`cargo metadata` lists no outpost-hub-bin package with a version")?;
        Ok(Self {
            target_dir: PathBuf::from(target_dir),
            version: version.to_owned(),
        })
    }
}

fn build_binaries(profile: &str) -> anyhow::Result<()> {
    let mut cmd = crate::cargo(&[]);
    cmd.args(["build", "--profile", profile, "--locked"])
        .current_dir(workspace_root());
    for p in PACKAGES {
        cmd.args(["-p", p]);
    }
    println!(
        "images: cargo build --profile {profile} --locked -p {}",
        PACKAGES.join(" -p ")
    );
    let status = cmd.status().context("cannot run `cargo build`")?;
    if !status.success() {
        bail!("the {profile} build failed ({status})");
    }
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

/// The image's id and its content label, if the image exists.
fn image_inspect(tag: &str) -> Option<(String, String)> {
    let format = format!("{{{{.Id}}}} {{{{index .Config.Labels \"{CONTENT_LABEL}\"}}}}");
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", &format, tag])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (id, label) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    Some((id.to_owned(), label.to_owned()))
}

/// Removes the image a rebuild replaced, unless something still uses or names it.
fn remove_if_dangling(id: &str) {
    let tags = Command::new("docker")
        .args(["image", "inspect", "--format", "{{len .RepoTags}}", id])
        .stderr(Stdio::null())
        .output();
    if matches!(&tags, Ok(out) if out.status.success() && out.stdout.trim_ascii() == b"0") {
        // Refused (and left alone) while a container uses it.
        let _ = Command::new("docker")
            .args(["image", "rm", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The static busybox: `$OUTPOST_BUSYBOX`, else Debian's `busybox-static` (`cargo xtask
/// test-images` installs it when missing).
fn static_busybox() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(BUSYBOX_ENV) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{BUSYBOX_ENV}={} is not a file", p.display());
        }
        return Ok(p);
    }
    let out = Command::new("dpkg")
        .args(["-L", "busybox-static"])
        .stderr(Stdio::null())
        .output();
    let listed = out.ok().filter(|o| o.status.success()).and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(PathBuf::from)
            .find(|p| p.ends_with("bin/busybox") && p.is_file())
    });
    listed.with_context(|| {
        format!(
            "no static busybox: install Debian's busybox-static (`apt-get install -y \
             busybox-static`, or run `cargo xtask test-images`), or set {BUSYBOX_ENV} to a \
             statically linked busybox"
        )
    })
}

/// The git that goes into the runner image, at the same paths as on the host (its exec path is
/// compiled in).
struct Git {
    /// The `git` binary, symlinks resolved.
    program: PathBuf,
    /// `git --exec-path`: where its helper programs are.
    exec_path: PathBuf,
    /// `<prefix>/share/git-core/templates`, copied so `git init` does not warn on every checkout.
    templates: Option<PathBuf>,
}

impl Git {
    fn find() -> anyhow::Result<Self> {
        let program = match std::env::var_os(GIT_ENV) {
            Some(p) => PathBuf::from(p),
            None => find_on_path("git").with_context(|| {
                format!("no `git` on PATH: install git, or set {GIT_ENV} to a git binary")
            })?,
        };
        let program = program
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", program.display()))?;
        let out = Command::new(&program)
            .arg("--exec-path")
            .output()
            .with_context(|| format!("cannot run {} --exec-path", program.display()))?;
        if !out.status.success() {
            bail!("{} --exec-path failed ({})", program.display(), out.status);
        }
        let exec_path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if !exec_path.join("git-remote-http").is_file() {
            bail!(
                "{} has no HTTP transport ({} is missing); pick another git with {GIT_ENV}",
                program.display(),
                exec_path.join("git-remote-http").display()
            );
        }
        // `<prefix>/libexec/git-core` or `<prefix>/lib/git-core`.
        let templates = exec_path
            .ancestors()
            .nth(2)
            .map(|prefix| prefix.join("share/git-core/templates"))
            .filter(|t| t.is_dir());
        Ok(Self {
            program,
            exec_path,
            templates,
        })
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      outpost:x:10001:10001:outpost:/home/outpost:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\noutpost:x:10001:\nnogroup:x:65534:\n";
/// glibc's lookups: files, then DNS (service names on a compose network).
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n\
                        networks: files\nprotocols: files\nservices: files\n";

/// Builds `image`'s root filesystem afresh at `root`.
fn assemble(
    image: &Image,
    root: &Path,
    bin_dir: &Path,
    busybox: &Path,
    git: Option<&Git>,
) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", root.display()));
        }
        _ => {}
    }
    let fs = Rootfs::new(root);
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("usr/local/bin", 0o755),
        ("home/outpost", 0o700),
    ]
    .iter()
    .chain(image.dirs)
    {
        fs.dir(dir, *mode)?;
    }
    fs.write("etc/passwd", PASSWD, 0o644)?;
    fs.write("etc/group", GROUP, 0o644)?;
    fs.write("etc/nsswitch.conf", NSSWITCH, 0o644)?;
    fs.copy(Path::new(CA_BUNDLE), CA_BUNDLE, 0o644)
        .with_context(|| {
            format!("the CA bundle {CA_BUNDLE} is needed (Debian's ca-certificates)")
        })?;

    fs.copy(busybox, "bin/busybox", 0o755)?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .context("cannot list the busybox applets")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        fs.symlink(&format!("bin/{applet}"), "busybox")?;
    }

    let mut elves = Vec::new();
    for bin in image.binaries {
        let from = bin_dir.join(bin);
        if !from.is_file() {
            bail!(
                "{} is missing: build it with `cargo build -p {}` in the right profile (or drop \
                 --no-build)",
                from.display(),
                PACKAGES.join(" -p ")
            );
        }
        let to = format!("usr/local/bin/{bin}");
        fs.copy_stripped(&from, &to)?;
        elves.push(from);
    }
    if let Some(git) = git {
        let program = git.program.to_string_lossy().into_owned();
        fs.copy(&git.program, &program, 0o755)?;
        elves.push(git.program.clone());
        if !["/usr/local/bin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| git.program.parent() == Some(Path::new(d)))
        {
            fs.symlink("usr/bin/git", &program)?;
        }
        let exec = git.exec_path.to_string_lossy().into_owned();
        fs.dir(&exec, 0o755)?;
        let http = git.exec_path.join("git-remote-http");
        fs.copy(&http, &format!("{exec}/git-remote-http"), 0o755)?;
        elves.push(http);
        fs.symlink(&format!("{exec}/git-remote-https"), "git-remote-http")?;
        // Builtins git runs as programs (the local transport), dispatched on argv[0].
        for builtin in [
            "git",
            "git-upload-pack",
            "git-receive-pack",
            "git-upload-archive",
        ] {
            fs.symlink(&format!("{exec}/{builtin}"), &program)?;
        }
        if let Some(templates) = &git.templates {
            fs.copy_tree(templates, &templates.to_string_lossy())?;
        }
    }
    let mut libs = BTreeSet::new();
    for elf in &elves {
        libs.extend(shared_libraries(elf)?);
    }
    for lib in &libs {
        fs.copy(lib, &lib.to_string_lossy(), 0o755)?;
    }
    Ok(())
}

/// The shared libraries `ldd` lists for `elf`, the dynamic loader included.
fn shared_libraries(elf: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(elf)
        .output()
        .context("cannot run `ldd` (glibc's, needed to find the shared libraries)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "`ldd {}` failed: {}{}",
            elf.display(),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("{} needs a library this host lacks: {line}", elf.display());
        }
        // `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)` or `/lib64/ld-linux-x86-64.so.2
        // (0x…)`; the vDSO has no path.
        let path = line.split_once("=>").map_or(line, |(_, p)| p).trim();
        let path = path.split(" (").next().unwrap_or_default();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// A root filesystem being assembled; paths are relative to its root (a leading `/` is fine).
struct Rootfs<'a> {
    root: &'a Path,
}

impl<'a> Rootfs<'a> {
    fn new(root: &'a Path) -> Self {
        Self { root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn parent(&self, rel: &str) -> anyhow::Result<PathBuf> {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        Ok(path)
    }

    fn dir(&self, rel: &str, mode: u32) -> anyhow::Result<()> {
        let path = self.path(rel);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        set_mode(&path, mode)
    }

    fn write(&self, rel: &str, text: &str, mode: u32) -> anyhow::Result<()> {
        let path = self.parent(rel)?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        set_mode(&path, mode)
    }

    /// Copies the content `from` resolves to (a symlinked library becomes a file).
    fn copy(&self, from: &Path, rel: &str, mode: u32) -> anyhow::Result<()> {
        let path = self.parent(rel)?;
        std::fs::copy(from, &path)
            .with_context(|| format!("cannot copy {} to {}", from.display(), path.display()))?;
        set_mode(&path, mode)
    }

    /// Copies a binary without its debug info (symbols stay, for backtraces); whole when the
    /// host has no `strip`.
    fn copy_stripped(&self, from: &Path, rel: &str) -> anyhow::Result<()> {
        let path = self.parent(rel)?;
        let stripped = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&path)
            .arg(from)
            .status()
            .is_ok_and(|s| s.success());
        if stripped {
            set_mode(&path, 0o755)
        } else {
            self.copy(from, rel, 0o755)
        }
    }

    /// Copies the directory `from` with its files, modes and links.
    fn copy_tree(&self, from: &Path, rel: &str) -> anyhow::Result<()> {
        let mode = |p: &Path| -> anyhow::Result<u32> {
            let meta =
                std::fs::metadata(p).with_context(|| format!("cannot stat {}", p.display()))?;
            Ok(meta.permissions().mode() & 0o7777)
        };
        self.dir(rel, mode(from)?)?;
        let entries =
            std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
            let path = entry.path();
            let child = format!("{rel}/{}", entry.file_name().to_string_lossy());
            let kind = entry
                .file_type()
                .with_context(|| format!("cannot stat {}", path.display()))?;
            if kind.is_symlink() {
                let target = std::fs::read_link(&path)
                    .with_context(|| format!("cannot read the link {}", path.display()))?;
                self.symlink(&child, &target.to_string_lossy())?;
            } else if kind.is_dir() {
                self.copy_tree(&path, &child)?;
            } else {
                self.copy(&path, &child, mode(&path)?)?;
            }
        }
        Ok(())
    }

    fn symlink(&self, rel: &str, target: &str) -> anyhow::Result<()> {
        let path = self.parent(rel)?;
        std::os::unix::fs::symlink(target, &path)
            .with_context(|| format!("cannot link {} to {target}", path.display()))
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// A hash of the build context (every path, type, mode, link target and byte under `rootfs`),
/// the Dockerfile and the version label: equal hashes mean an equal image. std's hasher is not
/// stable across Rust releases; a toolchain update only costs one rebuild.
fn content_hash(rootfs: &Path, dockerfile: &[u8], version: &str) -> anyhow::Result<String> {
    let mut hasher = DefaultHasher::new();
    hasher.write(dockerfile);
    hasher.write(version.as_bytes());
    let mut stack = vec![rootfs.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot read {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("cannot stat {}", path.display()))?;
            let rel = path.strip_prefix(rootfs).unwrap_or(&path);
            hasher.write(rel.as_os_str().as_encoded_bytes());
            hasher.write_u32(meta.permissions().mode());
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)
                    .with_context(|| format!("cannot read the link {}", path.display()))?;
                hasher.write(target.as_os_str().as_encoded_bytes());
            } else if meta.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                hasher.write_usize(bytes.len());
                hasher.write(&bytes);
            }
        }
    }
    Ok(format!("{:016x}", hasher.finish()))
}

fn docker_build(
    image: &Image,
    dockerfile: &Path,
    context: &Path,
    content: &str,
    version: &str,
) -> anyhow::Result<()> {
    println!(
        "images: docker build -t {} ({})",
        image.tag,
        context.display()
    );
    let out = Command::new("docker")
        .args(["build", "--quiet", "--pull=false", "--tag", image.tag])
        .arg("--file")
        .arg(dockerfile)
        .args(["--label", &format!("{CONTENT_LABEL}={content}")])
        .args([
            "--label",
            &format!("org.opencontainers.image.version={version}"),
        ])
        .arg(context)
        .output()
        .context("cannot run `docker build`")?;
    if !out.status.success() {
        bail!(
            "`docker build` of {} failed: {}{}",
            image.tag,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs the new image's programs once, so a missing library or a broken health check shows here
/// and not in a deployment.
fn smoke_test(image: &Image) -> anyhow::Result<()> {
    let health = health_check(image.tag)?;
    let serve_and_check;
    let mut checks: Vec<(&str, Vec<&str>)> = image
        .binaries
        .iter()
        .map(|b| (*b, vec!["--version"]))
        .collect();
    if image.git {
        // A clone over the local transport (git-upload-pack through /bin/sh), and the HTTP(S)
        // helper loading its libraries (an unreachable address: refused, not a loader error).
        checks.push((
            "/bin/sh",
            vec![
                "-c",
                "set -e; cd /tmp; git init -q src; \
                 git -C src -c user.name=x -c user.email=x@x commit -q --allow-empty -m x; \
                 git clone -q file:///tmp/src dst; git -C dst log --format=%s; \
                 ! git ls-remote https://127.0.0.1:1/x.git 2>err; \
                 if grep -q 'shared libraries' err; then cat err; exit 1; fi",
            ],
        ));
    }
    if let Some(serve) = image.serve {
        // The service alone, then the image's own health check until it passes (or 10 s).
        serve_and_check = format!(
            "{serve} >/tmp/serve.log 2>&1 & i=0; while [ $i -lt 100 ]; do \"$@\" && exit 0; \
             i=$((i + 1)); sleep 0.1; done; cat /tmp/serve.log; exit 1"
        );
        let mut args = vec!["-c", serve_and_check.as_str(), "sh"];
        args.extend(health.iter().map(String::as_str));
        checks.push(("/bin/sh", args));
    }
    for (program, args) in checks {
        let out = Command::new("docker")
            .args(["run", "--rm", "--network", "none", "--entrypoint", program])
            .arg(image.tag)
            .args(&args)
            .output()
            .context("cannot run `docker run`")?;
        if !out.status.success() {
            bail!(
                "the new image {} does not run `{program} {}`: {}{}",
                image.tag,
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// The command of the image's `HEALTHCHECK` (`CMD` form).
fn health_check(tag: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .Config.Healthcheck.Test}}",
            tag,
        ])
        .output()
        .context("cannot run `docker image inspect`")?;
    if !out.status.success() {
        bail!(
            "`docker image inspect {tag}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let test: Vec<String> = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{tag} has no HEALTHCHECK in exec form: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )
    })?;
    match test.split_first() {
        Some((kind, command)) if kind == "CMD" && !command.is_empty() => Ok(command.to_vec()),
        _ => bail!("{tag}'s HEALTHCHECK is not `CMD [...]`: {test:?}"),
    }
}
