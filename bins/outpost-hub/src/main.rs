//! `outpost-hub`: serve the reference control plane, or administer its database (organizations,
//! runner tokens). Thin: flags, configuration, tracing, a library call, an exit code.
//!
//! Exit codes: 0 success, 1 failure, 2 bad usage or configuration (flags, config keys, TLS files).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use outpost_client::{ClientConfig, HubClient};
use outpost_hub::{Admin, ConfigSources, Hub, HubConfig, HubError, LogFormat};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-hub",
    version,
    about = "The reference outpost control plane"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand takes (they override the config file and `OUTPOST_HUB_*`).
#[derive(Debug, Args)]
struct Common {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The SQLite database file (`database`).
    #[arg(long, global = true, value_name = "PATH")]
    database: Option<PathBuf>,
    /// Log format on stderr: text or json (`log_format`).
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    /// For `org` and `token`: work against this running hub over HTTP (with the admin key from
    /// OUTPOST_HUB_ADMIN_KEY) instead of on the database file.
    #[arg(long, global = true, value_name = "URL")]
    hub: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve(ServeArgs),
    /// Manage organizations (on the database file, or a running hub with --hub).
    #[command(subcommand)]
    Org(OrgCommand),
    /// Manage runner tokens (on the database file, or a running hub with --hub).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port) (`listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// PEM certificate chain; with --tls-key, serve HTTPS (`tls_cert`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (`tls_key`).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum OrgCommand {
    /// Create an organization and print its API key (once).
    Create {
        /// The organization's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a runner token and print it (once).
    Create {
        #[arg(long)]
        org: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List an organization's runner tokens (never the tokens themselves).
    List {
        #[arg(long)]
        org: String,
    },
    /// Revoke a runner token: it is refused from its next call on.
    Revoke {
        #[arg(long)]
        org: String,
        /// The token's id (`t_...`), as `token create` and `token list` show it.
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("outpost-hub: {e}");
            return ExitCode::from(2);
        }
    };
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    init_tracing(config.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("outpost-hub: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config, cli.common.hub.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-hub: {e:#}");
            let usage = e.downcast_ref::<HubError>().is_some_and(|e| {
                matches!(
                    e,
                    HubError::Config { .. } | HubError::Invalid { .. } | HubError::Tls { .. }
                )
            });
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn load_config(cli: &Cli) -> Result<HubConfig, HubError> {
    let mut overrides = Vec::new();
    let mut set = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            overrides.push((key.to_owned(), value));
        }
    };
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    set("database", path(&cli.common.database));
    set("log_format", cli.common.log_format.clone());
    if let Command::Serve(args) = &cli.command {
        set("listen", args.listen.clone());
        set("tls_cert", path(&args.tls_cert));
        set("tls_key", path(&args.tls_key));
    }
    HubConfig::load(ConfigSources {
        file: cli.common.config.clone(),
        env: None,
        overrides,
    })
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(command: Command, config: HubConfig, hub: Option<String>) -> anyhow::Result<()> {
    if let Command::Serve(_) = command {
        return serve(config).await;
    }
    let target = match hub {
        Some(url) => {
            let key = config.admin_key.clone().context(
                "--hub needs the hub's admin key in OUTPOST_HUB_ADMIN_KEY (or `admin_key` in --config)",
            )?;
            Target::Remote(HubClient::new(ClientConfig::new(url, key))?)
        }
        None => Target::Database(Admin::open(&config).await?),
    };
    match command {
        Command::Serve(_) => Ok(()),
        Command::Org(cmd) => org(cmd, &target).await,
        Command::Token(cmd) => token(cmd, &target).await,
    }
}

/// Where the admin subcommands act: the database file, or a running hub over its API.
enum Target {
    Database(Admin),
    Remote(HubClient),
}

impl Target {
    async fn create_org(&self, name: &str) -> anyhow::Result<String> {
        Ok(match self {
            Self::Database(admin) => admin.create_org(name).await?,
            Self::Remote(client) => client.create_org(name).await?.api_key,
        })
    }

    async fn create_runner_token(
        &self,
        org: &str,
        description: &str,
    ) -> anyhow::Result<(String, String)> {
        Ok(match self {
            Self::Database(admin) => admin.create_runner_token(org, description).await?,
            Self::Remote(client) => {
                let created = client.create_runner_token(org, description).await?;
                (created.id, created.token)
            }
        })
    }

    async fn list_runner_tokens(
        &self,
        org: &str,
    ) -> anyhow::Result<Vec<outpost_protocol::RunnerTokenInfo>> {
        Ok(match self {
            Self::Database(admin) => admin.list_runner_tokens(org).await?,
            Self::Remote(client) => client.list_runner_tokens(org).await?,
        })
    }

    async fn revoke_runner_token(&self, org: &str, id: &str) -> anyhow::Result<()> {
        match self {
            Self::Database(admin) => admin.revoke_runner_token(org, id).await?,
            Self::Remote(client) => client.revoke_runner_token(org, id).await?,
        }
        Ok(())
    }
}

async fn serve(config: HubConfig) -> anyhow::Result<()> {
    let listen = config.listen;
    let hub = Hub::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let scheme = if hub.tls_enabled() { "https" } else { "http" };
    {
        // The one line on stdout, relied on by scripts and tests.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "outpost-hub listening on {scheme}://{addr}")
            .and_then(|()| stdout.flush())
            .context("writing the listening line to stdout")?;
    }
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(shutdown.clone()));
    let served = hub.serve(listener, shutdown).await;
    signals.abort();
    served.map_err(Into::into)
}

/// First SIGTERM or SIGINT: graceful shutdown. A second one: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        for round in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if round == 0 {
                tracing::info!("signal received: shutting down gracefully (again to exit at once)");
                shutdown.cancel();
            } else {
                tracing::warn!("second signal: exiting at once");
                std::process::exit(1);
            }
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_ok() {
            shutdown.cancel();
        }
    }
}

async fn org(cmd: OrgCommand, admin: &Target) -> anyhow::Result<()> {
    match cmd {
        OrgCommand::Create { name } => {
            let api_key = admin.create_org(&name).await?;
            println!("{api_key}");
            eprintln!(
                "organization `{name}` created; above is its API key: store it now, it cannot be \
                 shown again (use it as `Authorization: Bearer <key>`)"
            );
        }
    }
    Ok(())
}

async fn token(cmd: TokenCommand, admin: &Target) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { org, description } => {
            let (id, token) = admin.create_runner_token(&org, &description).await?;
            println!("{token}");
            eprintln!(
                "runner token {id} created for organization `{org}`; above is the token: store \
                 it now; it cannot be shown again"
            );
        }
        TokenCommand::List { org } => {
            let tokens = admin.list_runner_tokens(&org).await?;
            println!(
                "{:<24} {:<26} {:<26} DESCRIPTION",
                "ID", "CREATED", "REVOKED"
            );
            for t in tokens {
                let revoked = t
                    .revoked_at
                    .map_or_else(|| "-".to_owned(), |r| r.to_string());
                println!(
                    "{:<24} {:<26} {:<26} {}",
                    t.id,
                    t.created_at.to_string(),
                    revoked,
                    t.description
                );
            }
        }
        TokenCommand::Revoke { org, id } => {
            admin.revoke_runner_token(&org, &id).await?;
            eprintln!("runner token {id} of organization `{org}` revoked");
        }
    }
    Ok(())
}
