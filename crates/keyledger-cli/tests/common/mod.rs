//! `keyledger serve` as a process, for the tests that run the shipped binary: a configuration
//! with the simulated vault and configured tokens, a server started on 127.0.0.1:0 and read
//! back from its listening line, stopped with SIGTERM or killed.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

pub(crate) fn keyledger() -> &'static str {
    env!("CARGO_BIN_EXE_keyledger")
}

/// A configuration file at `path` for `store` with the simulated vault, the internal key file
/// `key_file`, `[[auth.tokens]]` of the given (token, role) pairs, and extra lines for the
/// `[server]` and `[store]` tables.
pub(crate) fn write_config(
    path: &Path,
    store: &str,
    key_file: &Path,
    tokens: &[(&str, &str)],
    server_extra: &str,
    store_extra: &str,
) -> PathBuf {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n\n[store]\nurl = \"{store}\"\n{store_extra}\n\n\
         [keys]\ninternal_key_file = \"{}\"\nvault = \"simulated\"\n\n\
         [audit]\nsigning_key_file = \"{}\"\n",
        key_file.display(),
        audit_key_file(key_file).display(),
    );
    for (token, role) in tokens {
        text.push_str(&format!(
            "\n[[auth.tokens]]\ntoken = \"{token}\"\nsubject = \"{role}@example.com\"\nroles = [\"{role}\"]\n"
        ));
    }
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

/// The audit signing key file of a test configuration: beside its internal key file.
pub(crate) fn audit_key_file(key_file: &Path) -> PathBuf {
    key_file.with_file_name("audit-signing-key")
}

/// `keyledger serve --config config`, its stderr written to `log`, its stdout piped.
pub(crate) fn serve_command(config: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(keyledger());
    cmd.args(["serve", "--config"])
        .arg(config)
        .env_remove("KEYLEDGER_STORE__URL")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    cmd
}

/// A running `keyledger serve`; killed when dropped, if the test did not stop it.
pub(crate) struct Serving {
    pub child: Child,
    pub base: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serving {
    /// Starts `serve` with `config` and waits for its listening line.
    pub(crate) fn start(config: &Path, log: &Path) -> Self {
        Self::spawn(serve_command(config, log), log)
    }

    /// Spawns `cmd` (a `serve_command`) and waits for its listening line; a server that ends
    /// first fails the test with its log.
    pub(crate) fn spawn(mut cmd: Command, log: &Path) -> Self {
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(base) = line.trim_end().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!(
                "first stdout line {line:?}; stderr: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        };
        Self {
            base: base.to_owned(),
            child,
        }
    }

    /// SIGTERM, and the exit status.
    pub(crate) fn stop(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }

    /// SIGKILL: no drain, no lease release.
    pub(crate) fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}
