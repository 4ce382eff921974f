//! `keyledger serve`: runs the service. So far it checks the configuration and says the HTTP
//! service is not built yet (the server crate replaces this body).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;

pub fn run(config: Option<PathBuf>) -> ExitCode {
    match config::load(config.as_deref()) {
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
    }
}
