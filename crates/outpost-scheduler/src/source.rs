//! Where a job's pipeline comes from: inline from the hub, or a git repository the runner checks
//! out inside the premises (the git CLI: `init`, `fetch --depth 1` of the ref or the remote's
//! default branch, `checkout`). Credentials come only from the runner's [`GitConfig`] and the
//! host's own git configuration, never from the hub.

use std::path::{Component, Path};
use std::process::Stdio;

use outpost_executor::CancellationToken;
use outpost_logship::{MIN_SECRET_LEN, Masker};
use outpost_pipeline::Pipeline;
use outpost_protocol::{Failure, FailureClass, GitSource, JobSpec};
use sha2::{Digest, Sha256};

use crate::config::GitConfig;

/// The name inline pipelines are parsed under (it shows in parse errors).
pub(crate) const INLINE_SOURCE_NAME: &str = "<inline>";

/// A pipeline ready to be turned into a prepared job.
#[derive(Debug, Clone)]
pub(crate) struct LoadedPipeline {
    pub source_name: String,
    pub text: String,
    pub pipeline: Pipeline,
    pub cache_scope: String,
}

/// Why a job's pipeline could not be loaded: the failure to report, and the text to write into
/// the job's log (already free of credentials).
#[derive(Debug, Clone)]
pub(crate) struct SourceFailure {
    pub failure: Failure,
    pub log: String,
}

impl SourceFailure {
    fn new(class: FailureClass, message: String) -> Self {
        Self {
            log: format!("error: {message}\n"),
            failure: Failure::new(class, message),
        }
    }
}

/// Loads the job's pipeline: parses the inline text, or checks the repository out into
/// `workspace` and parses the file named by the source.
pub(crate) async fn load(
    spec: &JobSpec,
    git: &GitConfig,
    workspace: &Path,
    cancel: &CancellationToken,
) -> Result<LoadedPipeline, SourceFailure> {
    match spec {
        JobSpec::Inline { pipeline } => {
            parse(INLINE_SOURCE_NAME, pipeline.clone(), "inline".to_owned())
        }
        JobSpec::Repo { source } => {
            checkout(git, &source.git, workspace, cancel).await?;
            let text = read_pipeline_file(workspace, &source.path).await?;
            parse(&source.path, text, cache_scope(&source.git, &source.path))
        }
    }
}

/// Parses a pipeline text; a parse error fails the job as `config` with the parser's
/// `file:line:column` message.
pub(crate) fn parse(
    source_name: &str,
    text: String,
    cache_scope: String,
) -> Result<LoadedPipeline, SourceFailure> {
    match outpost_pipeline::parse(source_name, &text) {
        Ok(pipeline) => Ok(LoadedPipeline {
            source_name: source_name.to_owned(),
            text,
            pipeline,
            cache_scope,
        }),
        Err(e) => Err(SourceFailure::new(
            FailureClass::Config,
            format!("invalid pipeline: {e}"),
        )),
    }
}

/// A cache scope for a git source: a readable prefix from the URL (credentials removed) and the
/// pipeline path, plus a hash of both so that different sources never share caches. Only
/// `[a-z0-9-]`, at most 60 characters.
pub(crate) fn cache_scope(git: &GitSource, path: &str) -> String {
    let url = redact_url(&git.url);
    let mut hasher = Sha256::new();
    hasher.update(url.as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    let hash = hasher.finalize();
    let hash: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    let readable = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let mut prefix = String::new();
    for c in readable.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            prefix.push(c);
        } else if !prefix.ends_with('-') {
            prefix.push('-');
        }
    }
    let mut prefix: String = prefix.trim_matches('-').chars().take(47).collect();
    prefix = prefix.trim_end_matches('-').to_owned();
    if prefix.is_empty() {
        format!("git-{hash}")
    } else {
        format!("{prefix}-{hash}")
    }
}

/// The URL with any `user:password@` part replaced by `***@`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The masker for git's messages: the values of the configured git environment and the URL's
/// password.
fn git_masker(git: &GitConfig, url: &str) -> Masker {
    let mut secrets: Vec<(String, Vec<u8>)> = git
        .env
        .iter()
        .filter(|(_, v)| v.len() >= MIN_SECRET_LEN)
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect();
    if let Some((_, rest)) = url.split_once("://") {
        let host_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            let userinfo = &rest[..at];
            let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
            if password.len() >= MIN_SECRET_LEN {
                secrets.push(("url".to_owned(), password.as_bytes().to_vec()));
            }
        }
    }
    Masker::new(&secrets).unwrap_or_else(|_| Masker::none())
}

/// Checks `source` out into `dir` (created fresh).
async fn checkout(
    git: &GitConfig,
    source: &GitSource,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<(), SourceFailure> {
    let masker = git_masker(git, &source.url);
    let shown_url = redact_url(&source.url);
    let git_ref = source.git_ref.as_deref().unwrap_or("HEAD");
    if source.url.starts_with('-') || source.url.trim().is_empty() {
        return Err(SourceFailure::new(
            FailureClass::Config,
            format!("invalid git url `{}`", masker.mask_str(&shown_url)),
        ));
    }
    if git_ref.starts_with('-')
        || git_ref.contains(':')
        || git_ref.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(SourceFailure::new(
            FailureClass::Config,
            format!("invalid git ref `{git_ref}`"),
        ));
    }
    let fresh = {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            crate::state::create_private_dir(&dir)
        })
        .await
    };
    match fresh {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(SourceFailure::new(
                FailureClass::Infrastructure,
                format!("cannot create the workspace {}: {e}", dir.display()),
            ));
        }
        Err(e) => {
            return Err(SourceFailure::new(
                FailureClass::Infrastructure,
                format!("cannot create the workspace {}: {e}", dir.display()),
            ));
        }
    }

    let dir_arg = dir.as_os_str();
    let steps: [(&str, Vec<&std::ffi::OsStr>); 3] = [
        ("init", vec!["init".as_ref(), "--quiet".as_ref(), dir_arg]),
        (
            "fetch",
            vec![
                "-C".as_ref(),
                dir_arg,
                "fetch".as_ref(),
                "--quiet".as_ref(),
                "--depth".as_ref(),
                "1".as_ref(),
                "--no-tags".as_ref(),
                "--".as_ref(),
                source.url.as_ref(),
                git_ref.as_ref(),
            ],
        ),
        (
            "checkout",
            vec![
                "-C".as_ref(),
                dir_arg,
                "checkout".as_ref(),
                "--quiet".as_ref(),
                "--detach".as_ref(),
                "FETCH_HEAD".as_ref(),
            ],
        ),
    ];
    let run_all = async {
        for (what, args) in steps {
            run_git(git, what, &args, &masker, &shown_url, git_ref).await?;
        }
        Ok(())
    };
    tokio::select! {
        result = run_all => result,
        () = tokio::time::sleep(git.timeout) => Err(SourceFailure::new(
            FailureClass::Infrastructure,
            format!(
                "checking out {} at `{git_ref}` took longer than {}",
                masker.mask_str(&shown_url),
                outpost_time::format(git.timeout)
            ),
        )),
        () = cancel.cancelled() => Err(SourceFailure::new(
            FailureClass::Cancelled,
            "the job was cancelled during the checkout".to_owned(),
        )),
    }
}

async fn run_git(
    git: &GitConfig,
    what: &str,
    args: &[&std::ffi::OsStr],
    masker: &Masker,
    shown_url: &str,
    git_ref: &str,
) -> Result<(), SourceFailure> {
    let mut cmd = tokio::process::Command::new(&git.program);
    cmd.arg("-c").arg("protocol.ext.allow=never");
    if let Some(helper) = &git.credential_helper {
        cmd.arg("-c").arg(format!("credential.helper={helper}"));
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env(
            "GIT_ALLOW_PROTOCOL",
            git.allowed_protocols
                .iter()
                .filter(|p| p.as_str() != "ext")
                .cloned()
                .collect::<Vec<_>>()
                .join(":"),
        )
        .envs(&git.env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = cmd.output().await.map_err(|e| {
        SourceFailure::new(
            FailureClass::Infrastructure,
            format!("cannot run {} {what}: {e}", git.program.display()),
        )
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = masker.mask_str(String::from_utf8_lossy(&output.stderr).trim());
    let stderr: String = stderr.chars().take(4000).collect();
    let class = if what == "fetch" && !is_network_error(&stderr) {
        FailureClass::Config
    } else {
        FailureClass::Infrastructure
    };
    let message = match what {
        "fetch" => format!(
            "cannot fetch `{git_ref}` from {}: {stderr}",
            masker.mask_str(shown_url)
        ),
        _ => format!("git {what} failed: {stderr}"),
    };
    Err(SourceFailure::new(class, message))
}

/// Whether git's message says the network, not the source, is at fault.
fn is_network_error(stderr: &str) -> bool {
    const SIGNS: [&str; 6] = [
        "Could not resolve host",
        "Connection refused",
        "Connection timed out",
        "Operation timed out",
        "Network is unreachable",
        "Temporary failure in name resolution",
    ];
    SIGNS.iter().any(|s| stderr.contains(s))
}

/// Reads the pipeline file at `path` inside the checkout, refusing paths that leave it.
async fn read_pipeline_file(workspace: &Path, path: &str) -> Result<String, SourceFailure> {
    let relative = Path::new(path);
    let escapes = relative.is_absolute()
        || path.is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes {
        return Err(SourceFailure::new(
            FailureClass::Config,
            format!(
                "invalid pipeline path `{path}`: it must be relative and stay inside the repository"
            ),
        ));
    }
    let workspace = workspace.to_owned();
    let shown = path.to_owned();
    let full = workspace.join(relative);
    let read = tokio::task::spawn_blocking(move || -> Result<String, SourceFailure> {
        let not_found = || {
            SourceFailure::new(
                FailureClass::Config,
                format!("the pipeline file `{shown}` does not exist in the repository"),
            )
        };
        let root = std::fs::canonicalize(&workspace).map_err(|e| {
            SourceFailure::new(
                FailureClass::Infrastructure,
                format!("cannot read the workspace {}: {e}", workspace.display()),
            )
        })?;
        let real = match std::fs::canonicalize(&full) {
            Ok(real) => real,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => {
                return Err(SourceFailure::new(
                    FailureClass::Config,
                    format!("cannot read the pipeline file `{shown}`: {e}"),
                ));
            }
        };
        if !real.starts_with(&root) {
            return Err(SourceFailure::new(
                FailureClass::Config,
                format!("the pipeline file `{shown}` points outside the repository"),
            ));
        }
        let meta = std::fs::metadata(&real).map_err(|_| not_found())?;
        if !meta.is_file() {
            return Err(not_found());
        }
        if meta.len() > outpost_pipeline::MAX_PIPELINE_BYTES as u64 {
            return Err(SourceFailure::new(
                FailureClass::Config,
                format!(
                    "the pipeline file `{shown}` is {} bytes long, more than the limit of {}",
                    meta.len(),
                    outpost_pipeline::MAX_PIPELINE_BYTES
                ),
            ));
        }
        let bytes = std::fs::read(&real).map_err(|e| {
            SourceFailure::new(
                FailureClass::Config,
                format!("cannot read the pipeline file `{shown}`: {e}"),
            )
        })?;
        String::from_utf8(bytes).map_err(|_| {
            SourceFailure::new(
                FailureClass::Config,
                format!("the pipeline file `{shown}` is not valid UTF-8"),
            )
        })
    })
    .await;
    match read {
        Ok(result) => result,
        Err(e) => Err(SourceFailure::new(
            FailureClass::Infrastructure,
            format!("reading the pipeline file failed: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        let check = |url: &str, expected: &str| assert_eq!(redact_url(url), expected, "{url}");
        check(
            "https://user:tok3n@git.example.com/a/b.git",
            "https://***@git.example.com/a/b.git",
        );
        check("https://git.example.com/a@b", "https://git.example.com/a@b");
        check("git@github.com:a/b.git", "git@github.com:a/b.git");
        check("file:///srv/repo", "file:///srv/repo");
    }

    #[test]
    fn cache_scopes_are_safe_and_distinct() {
        let src = |url: &str| GitSource {
            url: url.to_owned(),
            git_ref: None,
        };
        let a = cache_scope(&src("https://git.example.com/Team/App.git"), ".outpost.yml");
        let b = cache_scope(&src("https://git.example.com/team/app.git"), ".outpost.yml");
        let c = cache_scope(&src("https://git.example.com/Team/App.git"), "ci/other.yml");
        assert!(a.starts_with("git-example-com-team-app-git-"), "{a}");
        assert_ne!(a, b);
        assert_ne!(a, c);
        // Credentials do not change (or show in) the scope.
        let d = cache_scope(
            &src("https://u:secret-pass@git.example.com/Team/App.git"),
            ".outpost.yml",
        );
        assert!(!d.contains("secret"), "{d}");
        for s in [&a, &b, &c, &d] {
            assert!(s.len() <= 60, "{s}");
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{s}"
            );
        }
    }

    #[test]
    fn git_messages_are_masked() {
        let mut git = GitConfig::default();
        git.env
            .insert("GIT_TOKEN_HELPER_VALUE".into(), "hunter22".into());
        let masker = git_masker(&git, "https://bob:pa55word@example.com/r.git");
        let out = masker.mask_str("auth failed for pa55word with hunter22");
        assert!(
            !out.contains("pa55word") && !out.contains("hunter22"),
            "{out}"
        );
    }

    async fn git(dir: &Path, args: &[&str]) {
        let status = tokio::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .stdout(Stdio::null())
            .status()
            .await
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    #[tokio::test]
    async fn checks_out_a_local_repository_and_reads_the_pipeline() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).expect("mkdir");
        git(&repo, &["init", "--quiet", "--initial-branch=main"]).await;
        std::fs::write(
            repo.join(".outpost.yml"),
            "version: 1\nsteps:\n  - name: a\n    run: echo hi\n",
        )
        .expect("write");
        std::fs::write(repo.join("bad.yml"), "version: 1\nsteps: 3\n").expect("write");
        git(&repo, &["add", "."]).await;
        git(&repo, &["commit", "--quiet", "-m", "one"]).await;
        git(&repo, &["branch", "other"]).await;

        let url = format!("file://{}", repo.display());
        let cancel = CancellationToken::new();
        for git_ref in [None, Some("other".to_owned())] {
            let spec = JobSpec::Repo {
                source: outpost_protocol::Source {
                    git: GitSource {
                        url: url.clone(),
                        git_ref,
                    },
                    path: ".outpost.yml".into(),
                },
            };
            let work = tmp.path().join("work");
            let loaded = load(&spec, &GitConfig::default(), &work, &cancel)
                .await
                .expect("loaded");
            assert_eq!(loaded.pipeline.steps[0].name, "a");
            assert!(work.join(".outpost.yml").is_file());
        }

        // A parse error names the file, line and column.
        let spec = JobSpec::Repo {
            source: outpost_protocol::Source {
                git: GitSource {
                    url: url.clone(),
                    git_ref: None,
                },
                path: "bad.yml".into(),
            },
        };
        let err = load(
            &spec,
            &GitConfig::default(),
            &tmp.path().join("w2"),
            &cancel,
        )
        .await
        .expect_err("bad pipeline");
        assert_eq!(err.failure.class, FailureClass::Config);
        assert!(
            err.failure.message.contains("bad.yml:2:"),
            "{}",
            err.failure.message
        );
        assert!(err.log.contains("bad.yml:2:"), "{}", err.log);

        // A missing ref is a config failure carrying git's message.
        let spec = JobSpec::Repo {
            source: outpost_protocol::Source {
                git: GitSource {
                    url,
                    git_ref: Some("no-such-branch".into()),
                },
                path: ".outpost.yml".into(),
            },
        };
        let err = load(
            &spec,
            &GitConfig::default(),
            &tmp.path().join("w3"),
            &cancel,
        )
        .await
        .expect_err("missing ref");
        assert_eq!(err.failure.class, FailureClass::Config, "{err:?}");
        assert!(
            err.failure.message.contains("no-such-branch"),
            "{}",
            err.failure.message
        );

        // A path leaving the repository is refused.
        let err = read_pipeline_file(&tmp.path().join("work"), "../repo/.outpost.yml")
            .await
            .expect_err("escape");
        assert!(
            err.failure.message.contains("stay inside"),
            "{}",
            err.failure.message
        );
    }
}
