//! The Kubernetes backend as a runner starts it: `KubeConfig` is the `[executor]` section of
//! runner-k8s. The client configuration comes from `--kubeconfig` (runner-k8s's flag, handed
//! over with [`kubeconfig_override`]), else the section's `kubeconfig`, else kube's inference
//! (`KUBECONFIG`, `~/.kube/config`, then the pod's service account in a cluster).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use kube::config::{KubeConfigOptions, Kubeconfig};
use outpost_executor::{Backend, BackendEnv, Executor, ExecutorError};

use crate::{K8sError, KIND, KubeConfig, KubeExecutor};

/// Each job a pod, steps run by the step wrapper.
#[derive(Debug)]
pub struct KubeBackend;

static KUBECONFIG_FLAG: OnceLock<PathBuf> = OnceLock::new();

/// The kubeconfig file named on runner-k8s's command line (`--kubeconfig`), which wins over the
/// config section. The binary sets it once, before the runner starts: the agent hands a
/// backend its section only, and a flag of one backend has no place in the shared flags.
pub fn kubeconfig_override(path: PathBuf) {
    let _ = KUBECONFIG_FLAG.set(path);
}

/// The client configuration: from `file` when given, else inferred.
pub async fn client_config(file: Option<&Path>) -> Result<kube::Config, K8sError> {
    match file {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| K8sError::ClientConfig {
                message: format!("cannot read the kubeconfig {}: {e}", path.display()),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| K8sError::ClientConfig {
                    message: format!("the kubeconfig {} cannot be used: {e}", path.display()),
                })
        }
        None => kube::Config::infer().await.map_err(|e| K8sError::ClientConfig {
            message: format!(
                "no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) and not in a cluster: {e}"
            ),
        }),
    }
}

#[async_trait]
impl Backend for KubeBackend {
    const KIND: &'static str = KIND;
    type Config = KubeConfig;

    async fn start(
        config: &KubeConfig,
        env: &BackendEnv,
    ) -> Result<Arc<dyn Executor>, ExecutorError> {
        config.validate()?;
        let file = KUBECONFIG_FLAG
            .get()
            .cloned()
            .or_else(|| config.kubeconfig.clone());
        let client_config = client_config(file.as_deref()).await?;
        let executor = KubeExecutor::connect(
            config.clone(),
            client_config,
            env.state_dir.join("kubernetes"),
        )
        .await?;
        Ok(Arc::new(executor))
    }
}
