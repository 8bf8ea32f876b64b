//! Identifiers and secrets: random ids with a type prefix (`j_`, `r_`, `l_`, `t_`), secrets with
//! a recognisable prefix (`opk_` org API keys, `oprt_` runner tokens, `opadm_` admin keys), and
//! the SHA-256 under which a secret is stored.

use sha2::{Digest, Sha256};

use crate::store::SecretHash;

/// Prefix of an organization's API key.
pub const ORG_KEY_PREFIX: &str = "opk_";
/// Prefix of a runner token.
pub const RUNNER_TOKEN_PREFIX: &str = "oprt_";
/// Prefix of a generated admin key.
pub const ADMIN_KEY_PREFIX: &str = "opadm_";

/// A random id: `prefix` and 20 hex digits (80 bits).
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 10]>()))
}

/// A random secret: `prefix` and 64 hex digits (256 bits).
pub(crate) fn new_secret(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// The hash a secret is stored and looked up under.
pub(crate) fn hash(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_secrets_are_prefixed_and_distinct() {
        let a = new_secret(RUNNER_TOKEN_PREFIX);
        let b = new_secret(RUNNER_TOKEN_PREFIX);
        assert!(a.starts_with("oprt_") && a.len() == 5 + 64, "{a}");
        assert_ne!(a, b);
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&a.clone()));
        let id = new_id("j_");
        assert!(id.starts_with("j_") && id.len() == 22, "{id}");
    }
}
