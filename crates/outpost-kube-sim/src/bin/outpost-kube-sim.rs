//! `outpost-kube-sim`: runs the Kubernetes stand-in on a given port for manual use (kubectl,
//! a runner-k8s by hand), writes a kubeconfig for it, and removes what it created on Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use outpost_kube_sim::{KubeSim, SimConfig};

#[derive(Parser)]
#[command(
    version,
    about = "A Kubernetes API stand-in whose node runs pods on the Docker engine"
)]
struct Args {
    /// Port of the API (0: any free one).
    #[arg(long, default_value_t = 6443)]
    port: u16,
    /// Address of the API; keep it on loopback (plain HTTP, one token).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// The bearer token (random if not given).
    #[arg(long, env = "OUTPOST_KUBE_SIM_TOKEN")]
    token: Option<String>,
    /// Where to write a kubeconfig for the stand-in.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Namespaces that exist (repeatable; `default` when none is given).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// The node's allocatable CPU (a quantity: `4`, `2500m`).
    #[arg(long, default_value = "4")]
    allocatable_cpu: String,
    /// The node's allocatable memory (a quantity: `8Gi`).
    #[arg(long, default_value = "8Gi")]
    allocatable_memory: String,
    /// Container log rotation size in bytes.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    log_rotation_bytes: u64,
    /// Watch history length (older versions answer 410 Expired).
    #[arg(long, default_value_t = 10_000)]
    watch_history: usize,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 60)]
    bookmark_interval: u64,
    /// Image of the pods' sandbox containers.
    #[arg(long, default_value = "outpost-test/busybox:1")]
    sandbox_image: String,
}

fn quantity(s: &str) -> anyhow::Result<f64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, suffix) = s.split_at(split);
    let n: f64 = n.parse().with_context(|| format!("bad quantity {s:?}"))?;
    let f = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        other => bail!("bad quantity suffix {other:?} in {s:?}"),
    };
    Ok(n * f)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut cfg = SimConfig {
        bind: SocketAddr::new(args.bind, args.port),
        token: args.token,
        allocatable_cpu_millis: (quantity(&args.allocatable_cpu)? * 1000.0).ceil() as u64,
        allocatable_memory_bytes: quantity(&args.allocatable_memory)?.ceil() as u64,
        log_rotation_bytes: args.log_rotation_bytes,
        watch_history: args.watch_history,
        bookmark_interval: Duration::from_secs(args.bookmark_interval.max(1)),
        sandbox_image: args.sandbox_image,
        ..SimConfig::default()
    };
    if !args.namespaces.is_empty() {
        cfg.namespaces = args.namespaces;
    }
    let sim = KubeSim::start(cfg).await.context("starting the stand-in")?;
    if let Some(path) = &args.kubeconfig {
        sim.write_kubeconfig(path)
            .context("writing the kubeconfig")?;
        println!("kubeconfig: {}", path.display());
    }
    println!(
        "outpost-kube-sim listening on {} (token {})",
        sim.url(),
        sim.token()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    println!("shutting down; removing the containers and volumes it created");
    sim.shutdown().await;
    Ok(())
}
