//! Docker helpers shared by the tests that drive the real engine.

/// On drop, removes every container, network and volume labelled with the runner id, through the CLI so
/// that it works from `Drop` during a panic too.
pub struct DockerPurge(pub String);

impl Drop for DockerPurge {
    fn drop(&mut self) {
        let filter = format!("label=outpost.runner-id={}", self.0);
        let ids = |args: &[&str]| -> Vec<String> {
            std::process::Command::new("docker")
                .args(args)
                .args(["--filter", &filter, "-q"])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        // Removals race with the runner's own cleanup ("removal already in progress"): go round
        // until nothing is left, with a bound.
        for _ in 0..50 {
            let mut left = 0;
            for (list, remove) in [
                (&["ps", "-a"][..], &["rm", "-f"][..]),
                (&["network", "ls"][..], &["network", "rm"][..]),
                (&["volume", "ls"][..], &["volume", "rm", "-f"][..]),
            ] {
                let found = ids(list);
                left += found.len();
                if !found.is_empty() {
                    let _ = std::process::Command::new("docker")
                        .args(remove)
                        .args(&found)
                        .output();
                }
            }
            if left == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
