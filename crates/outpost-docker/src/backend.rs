//! The Docker backend as a runner starts it: `DockerConfig` is the `[executor]` section of
//! `runner-docker` and `outpost run`.

use std::sync::Arc;

use async_trait::async_trait;
use outpost_executor::{Backend, BackendEnv, Executor, ExecutorError};

use crate::{DockerConfig, DockerExecutor};

/// Steps as Docker containers, through `DOCKER_HOST` or the local socket.
#[derive(Debug)]
pub struct DockerBackend;

#[async_trait]
impl Backend for DockerBackend {
    const KIND: &'static str = "docker";
    type Config = DockerConfig;

    async fn start(
        config: &DockerConfig,
        env: &BackendEnv,
    ) -> Result<Arc<dyn Executor>, ExecutorError> {
        let mut config = config.clone();
        // The cache-use index lives with the rest of the runner's state unless configured.
        config
            .state_dir
            .get_or_insert_with(|| env.state_dir.clone());
        Ok(Arc::new(DockerExecutor::connect(config).await?))
    }
}
