//! Project tasks, run as `cargo xtask <task>`.

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        Some(other) => anyhow::bail!("unknown task `{other}`"),
        None => anyhow::bail!("usage: cargo xtask <ci|bench|test-images>"),
    }
}
