//! `keyledger`: the command line of the keyledger service (CONTRACT.md "Command line").

mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "keyledger",
    version,
    about = "Event-sourced customer-managed-key state for a SaaS platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the service. With no --config and no KEYLEDGER_* variables: dev mode.
    Serve {
        /// A TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => match config::load(config.as_deref()) {
            Ok((_, origin)) => {
                eprintln!(
                    "keyledger serve: configuration is valid ({origin:?}), but the HTTP service is not built yet."
                );
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("keyledger: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
    }
}
