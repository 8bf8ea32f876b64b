//! The runner-side secret providers (DESIGN.md §1): a pipeline names its secrets, the runner
//! resolves their values locally and never sends them anywhere.
//!
//! Two built-in providers, looked up in this order:
//! 1. the environment variable `<prefix><NAME>` (default prefix `OUTPOST_SECRET_`);
//! 2. the file `<secrets_dir>/<NAME>`, whose one trailing newline (`\n` or `\r\n`) is trimmed,
//!    so that `echo value > NAME` works.
//!
//! A secret found in neither fails the job as `config` before any step runs, naming the secret.

use std::path::{Path, PathBuf};

use outpost_executor::Secret;

/// Where secrets are looked up.
#[derive(Debug, Clone)]
pub(crate) struct SecretProviders {
    pub env_prefix: String,
    pub dir: Option<PathBuf>,
}

/// Why a secret could not be resolved. The message names the secret, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretError(pub String);

impl SecretProviders {
    /// Resolves every name, in order. Blocking (reads files): call from `spawn_blocking`.
    pub(crate) fn resolve(&self, names: &[String]) -> Result<Vec<Secret>, SecretError> {
        self.resolve_with(names, |var| std::env::var(var))
    }

    /// [`Self::resolve`] with the environment lookup given (tests cannot set variables safely).
    fn resolve_with(
        &self,
        names: &[String],
        env: impl Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Result<Vec<Secret>, SecretError> {
        names
            .iter()
            .map(|name| self.resolve_one(name, &env))
            .collect()
    }

    fn resolve_one(
        &self,
        name: &str,
        env: &impl Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Result<Secret, SecretError> {
        let var = format!("{}{name}", self.env_prefix);
        match env(&var) {
            Ok(value) => {
                return Ok(Secret {
                    name: name.to_owned(),
                    value,
                });
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(SecretError(format!(
                    "secret `{name}`: the environment variable {var} is not valid UTF-8"
                )));
            }
            Err(std::env::VarError::NotPresent) => {}
        }
        if let Some(dir) = &self.dir
            && is_file_name(name)
        {
            let path = dir.join(name);
            match read_secret_file(&path) {
                Ok(Some(value)) => {
                    return Ok(Secret {
                        name: name.to_owned(),
                        value,
                    });
                }
                Ok(None) => {}
                Err(reason) => {
                    return Err(SecretError(format!(
                        "secret `{name}`: cannot read {}: {reason}",
                        path.display()
                    )));
                }
            }
        }
        let mut where_ = format!("the environment variable {var}");
        if let Some(dir) = &self.dir {
            where_.push_str(&format!(" or the file {}", dir.join(name).display()));
        }
        Err(SecretError(format!(
            "secret `{name}` is not defined on this runner (looked for {where_})"
        )))
    }
}

/// A name usable as one file name in the secrets directory (the pipeline parser already limits
/// names to `[A-Za-z_][A-Za-z0-9_]*`; this guards against anything else).
fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The file's content with one trailing newline trimmed; `None` when there is no such file.
fn read_secret_file(path: &Path) -> Result<Option<String>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut text = String::from_utf8(bytes).map_err(|_| "not valid UTF-8".to_owned())?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_with_one_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("A"), "alpha-value\n").expect("write");
        std::fs::write(dir.path().join("B"), "two\nlines\n\n").expect("write");
        std::fs::write(dir.path().join("C"), "crlf-value\r\n").expect("write");
        let providers = SecretProviders {
            env_prefix: "OUTPOST_TEST_UNUSED_PREFIX_".into(),
            dir: Some(dir.path().to_owned()),
        };
        let got = providers
            .resolve(&["A".into(), "B".into(), "C".into()])
            .expect("resolved");
        let values: Vec<&str> = got.iter().map(|s| s.value.as_str()).collect();
        assert_eq!(values, ["alpha-value", "two\nlines\n", "crlf-value"]);
    }

    #[test]
    fn the_environment_wins_over_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("TOKEN"), "from-file\n").expect("write");
        let providers = SecretProviders {
            env_prefix: "OUTPOST_SECRET_".into(),
            dir: Some(dir.path().to_owned()),
        };
        let env = |var: &str| match var {
            "OUTPOST_SECRET_TOKEN" => Ok("from-env\n".to_owned()),
            _ => Err(std::env::VarError::NotPresent),
        };
        let got = providers
            .resolve_with(&["TOKEN".into()], env)
            .expect("resolved");
        // Values from the environment are taken as they are.
        assert_eq!(got[0].value, "from-env\n");
        let got = providers
            .resolve_with(&["TOKEN".into()], |_| Err(std::env::VarError::NotPresent))
            .expect("resolved");
        assert_eq!(got[0].value, "from-file");
    }

    #[test]
    fn a_missing_secret_is_named_without_a_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let providers = SecretProviders {
            env_prefix: "OUTPOST_TEST_UNUSED_PREFIX_".into(),
            dir: Some(dir.path().to_owned()),
        };
        let err = providers
            .resolve(&["NOPE".into()])
            .expect_err("missing secret");
        assert!(err.0.contains("`NOPE`"), "{}", err.0);
        assert!(
            err.0.contains("OUTPOST_TEST_UNUSED_PREFIX_NOPE"),
            "{}",
            err.0
        );
        // A name that is not a plain file name is never looked up as a path.
        let err = providers
            .resolve(&["../etc/passwd".into()])
            .expect_err("refused");
        assert!(err.0.contains("is not defined"), "{}", err.0);
    }
}
