//! Administration of organizations and runner tokens, shared by the HTTP handlers, [`Admin`]
//! (the `outpost-hub org|token` subcommands, straight on the database file) and [`crate::Hub`]
//! (embedders such as `outpost run`).

use std::path::Path;
use std::sync::Arc;

use outpost_protocol::{RunnerTokenInfo, Timestamp};

use crate::HubError;
use crate::config::HubConfig;
use crate::secret::{self, ORG_KEY_PREFIX, RUNNER_TOKEN_PREFIX, new_id, new_secret};
use crate::store::{Org, SqliteStore, Store, StoreError};

/// Longest organization name: an RFC 1123 label.
const MAX_ORG_NAME: usize = 63;

/// Checks the name of a new organization: a lowercase RFC 1123 label, 1 to 63 of `a-z`, `0-9`
/// and `-`, not starting or ending with `-` (it appears in URL paths, file names and shell
/// commands: no `.`, `..` or `-rf`, and no two orgs told apart by case). Organizations created
/// under the older rule (letters of either case, digits, `.`, `_`, `-`) keep their names:
/// lookups take any name.
pub(crate) fn check_org_name(name: &str) -> Result<(), HubError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ORG_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(HubError::Invalid {
            what: "organization name",
            message: format!(
                "{:?}: use 1 to {MAX_ORG_NAME} lowercase letters, digits and dashes, starting and \
                 ending with a letter or digit",
                name.chars().take(MAX_ORG_NAME + 1).collect::<String>()
            ),
        })
    }
}

/// Creates an organization; returns its API key (shown once, stored as a hash).
pub(crate) async fn create_org(store: &dyn Store, name: &str) -> Result<String, HubError> {
    check_org_name(name)?;
    let api_key = new_secret(ORG_KEY_PREFIX);
    match store
        .create_org(name.to_owned(), secret::hash(&api_key), Timestamp::now())
        .await
    {
        Ok(_) => {
            tracing::info!(org = name, "organization created");
            Ok(api_key)
        }
        Err(StoreError::AlreadyExists { .. }) => Err(HubError::OrgExists {
            org: name.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Creates a runner token of `org`; returns `(id, token)` (the token shown once).
pub(crate) async fn create_runner_token(
    store: &dyn Store,
    org: &Org,
    description: &str,
) -> Result<(String, String), HubError> {
    let id = new_id("t_");
    let token = new_secret(RUNNER_TOKEN_PREFIX);
    store
        .create_runner_token(
            org.id,
            id.clone(),
            description.to_owned(),
            secret::hash(&token),
            Timestamp::now(),
        )
        .await?;
    tracing::info!(org = %org.name, token = %id, "runner token created");
    Ok((id, token))
}

async fn org(store: &dyn Store, name: &str) -> Result<Org, HubError> {
    store
        .org_by_name(name.to_owned())
        .await?
        .ok_or_else(|| HubError::OrgNotFound {
            org: name.to_owned(),
        })
}

/// Administration straight on a store: what the `outpost-hub org|token` subcommands use. Safe
/// while a hub serves the same database file (SQLite WAL, busy timeout).
#[derive(Clone)]
pub struct Admin {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// Opens the database named by `config.database` (creating it when missing).
    pub async fn open(config: &HubConfig) -> Result<Self, HubError> {
        let store = open_store(&config.database).await?;
        Ok(Self {
            store: Arc::new(store),
        })
    }

    pub(crate) fn from_store(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Creates an organization; returns its API key (shown once).
    pub async fn create_org(&self, name: &str) -> Result<String, HubError> {
        create_org(self.store.as_ref(), name).await
    }

    /// Creates a runner token of organization `org`; returns `(id, token)` (shown once).
    pub async fn create_runner_token(
        &self,
        org_name: &str,
        description: &str,
    ) -> Result<(String, String), HubError> {
        let org = org(self.store.as_ref(), org_name).await?;
        create_runner_token(self.store.as_ref(), &org, description).await
    }

    /// The runner tokens of organization `org` (never the tokens themselves).
    pub async fn list_runner_tokens(
        &self,
        org_name: &str,
    ) -> Result<Vec<RunnerTokenInfo>, HubError> {
        let org = org(self.store.as_ref(), org_name).await?;
        Ok(self.store.list_runner_tokens(org.id).await?)
    }

    /// Revokes runner token `id` of organization `org` (idempotent).
    pub async fn revoke_runner_token(&self, org_name: &str, id: &str) -> Result<(), HubError> {
        let org = org(self.store.as_ref(), org_name).await?;
        match self
            .store
            .revoke_runner_token(org.id, id.to_owned(), Timestamp::now())
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::NotFound { .. }) => Err(HubError::TokenNotFound {
                org: org_name.to_owned(),
                id: id.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// Opens the SQLite store on the blocking pool.
pub(crate) async fn open_store(path: &Path) -> Result<SqliteStore, HubError> {
    let path = path.to_owned();
    let opened = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
        .await
        .map_err(|e| StoreError::Task {
            op: "open database",
            message: e.to_string(),
        })?;
    Ok(opened?)
}
