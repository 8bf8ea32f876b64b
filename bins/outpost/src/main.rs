//! `outpost`: the user CLI. Exit code 0 only when the command (for `run` and `submit --follow`,
//! the job) succeeded; 1 when the job ended otherwise; 2 on usage or input errors.

use std::process::ExitCode;

use clap::Parser;
use outpost_cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    match outpost_cli::run(Cli::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("outpost: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
