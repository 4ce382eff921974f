//! `akv-emulator --listen 127.0.0.1:0 --state-dir DIR`: prints one JSON line
//! `{"vault_url":…,"authority_host":…,"ca_cert":"DIR/ca.pem","tenant_id":…}` and serves until
//! SIGINT/SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// An HTTPS Azure Key Vault (keys) and Entra ID token endpoint emulator with a control API.
#[derive(Debug, Parser)]
#[command(name = "akv-emulator")]
struct Args {
    /// The address to listen on (port 0 picks a free port; the start-up line names it).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where the CA certificate and key (`ca.pem`, `ca-key.pem`) and the vault's state
    /// (`state.json`) are kept.
    #[arg(long, value_name = "DIR", default_value = "akv-emulator-state")]
    state_dir: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Args { listen, state_dir } = Args::parse();
    let emulator = match akv_emulator::start(listen, &state_dir).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("akv-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{}", emulator.startup_line())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);
    match emulator.run_until(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("akv-emulator: could not save state: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
