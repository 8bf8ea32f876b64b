//! `runner-k8s`: an outpost runner whose jobs are Kubernetes pods (one per job, steps run by the
//! step wrapper inside it). Talks to the API server with the pod's service account in a cluster,
//! or through a kubeconfig (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`). Flags, config and
//! signals come from outpost-agent; the `[executor]` section is outpost-k8s's `KubeConfig`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use outpost_agent::RunnerArgs;
use outpost_k8s::KubeBackend;

#[derive(Debug, Parser)]
#[command(
    name = "runner-k8s",
    version,
    about = "outpost runner: each job a Kubernetes pod"
)]
struct Cli {
    #[command(flatten)]
    runner: RunnerArgs,
    /// Kubeconfig file to reach the cluster with (default: KUBECONFIG, ~/.kube/config, else the
    /// in-cluster service account); wins over `[executor] kubeconfig`
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = cli.kubeconfig {
        outpost_k8s::kubeconfig_override(path);
    }
    outpost_agent::exit(
        "runner-k8s",
        outpost_agent::run::<KubeBackend>(cli.runner).await,
    )
}
