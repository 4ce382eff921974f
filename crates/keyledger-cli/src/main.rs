//! `keyledger`: the command line of the keyledger service (CONTRACT.md "Command line").
//!
//! Exit codes: 0 done, 1 failed (one line on stderr: `keyledger: <what failed>: <cause>`),
//! 2 usage (clap's own), 3 `verify` found a broken hash chain or a signed checkpoint the store
//! does not hold, or `audit verify` a bundle that does not hold.

mod commands;
mod config;
mod key_file;
mod report;
mod serve;
mod store_url;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use keyledger_domain::OrgId;

use crate::report::{Failure, Outcome};
use crate::store_url::StoreUrl;

/// mimalloc rather than glibc's allocator (ADR 0035): the service allocates and frees many
/// short-lived buffers per request on many threads, and glibc's allocator took about a tenth
/// of `serve`'s CPU under the plan-change load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Applies the pending migrations (creating a SQLite file when absent).
    Migrate(StoreArg),
    /// Recomputes the hash chains, then holds the store against every signed checkpoint in
    /// stream audit. Exit 3 names the first bad event, or the organization and the checkpoint
    /// that does not hold.
    Verify {
        #[command(flatten)]
        store: StoreArg,
        /// Only this organization's stream and checkpoints (the global log's are skipped).
        #[arg(long, value_name = "ID", value_parser = parse_org)]
        org: Option<OrgId>,
        /// The note verifier key from GET /v1/audit/public-key: NAME+HASH+KEY. With it, every
        /// checkpoint's signature is checked too; without it, only what the notes state.
        #[arg(long, value_name = "KEY", value_parser = parse_verifier)]
        verifier_key: Option<Box<keyledger_audit::Verifier>>,
    },
    /// Export and import of the stored events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Projection maintenance.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// The verifiable audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks an organization's audit bundle offline: the checkpoint's signature, every leaf,
    /// the root and, with --previous, that the log extends an earlier checkpoint. Exit 3 names
    /// the leaf or the checkpoint that does not hold.
    Verify {
        /// A bundle from GET /v1/organizations/{org}/audit/bundle.
        #[arg(long, value_name = "FILE")]
        bundle: PathBuf,
        /// The note verifier key from GET /v1/audit/public-key: NAME+HASH+KEY.
        #[arg(long, value_name = "KEY", value_parser = parse_verifier)]
        verifier_key: Box<keyledger_audit::Verifier>,
        /// An earlier signed checkpoint of the organization's log, which the bundle must extend.
        #[arg(long, value_name = "CHECKPOINT_FILE")]
        previous: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Writes the stored envelopes as JSON lines to stdout, protected fields still sealed.
    Export {
        #[command(flatten)]
        store: StoreArg,
        /// Only events after this global position.
        #[arg(long, value_name = "POS", default_value_t = 0)]
        after: u64,
    },
    /// Appends an export to an empty store: same streams, versions and hashes; new positions.
    Import {
        #[command(flatten)]
        store: StoreArg,
        /// A file written by `keyledger events export`.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Rebuilds every projection from position 0. Stop the service first.
    Rebuild {
        #[command(flatten)]
        store: StoreArg,
        /// The internal key ring file (never created by this command).
        #[arg(
            long,
            env = "KEYLEDGER_KEYS__INTERNAL_KEY_FILE",
            value_name = "FILE",
            default_value = "keyledger-data/internal-keys.json"
        )]
        key_file: PathBuf,
    },
}

#[derive(Args)]
struct StoreArg {
    /// The event store: sqlite://PATH or postgres://USER@HOST/DATABASE.
    // Parsed by the command, so a bad URL is a failure (exit 1) with a readable message; the
    // value is hidden from help output, as it may hold a password.
    #[arg(
        long = "store",
        env = "KEYLEDGER_STORE__URL",
        value_name = "URL",
        hide_env_values = true
    )]
    url: String,
}

impl StoreArg {
    fn parse(&self) -> Result<StoreUrl, Failure> {
        StoreUrl::parse(&self.url)
    }
}

/// Boxed: a parsed key is larger than the other commands' arguments.
fn parse_verifier(s: &str) -> Result<Box<keyledger_audit::Verifier>, String> {
    keyledger_audit::Verifier::parse(s)
        .map(Box::new)
        .map_err(|e| e.to_string())
}

fn parse_org(s: &str) -> Result<OrgId, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an organization id (a UUID)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Serve { config } => return serve::run(config),
        // Offline: no store, so no runtime.
        Command::Audit(AuditCommand::Verify {
            bundle,
            verifier_key,
            previous,
        }) => {
            return match commands::audit::verify(&bundle, &verifier_key, previous.as_deref()) {
                Ok(outcome) => outcome.exit_code(),
                Err(failure) => failure.report(),
            };
        }
        other => other,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Failure::new("cannot start the async runtime", &e).report(),
    };
    match runtime.block_on(run(command)) {
        Ok(outcome) => outcome.exit_code(),
        Err(failure) => failure.report(),
    }
}

async fn run(command: Command) -> Result<Outcome, Failure> {
    match command {
        Command::Serve { .. } | Command::Audit(_) => {
            unreachable!("serve and audit run without the store runtime")
        }
        Command::Migrate(store) => commands::migrate::run(&store.parse()?).await,
        Command::Verify {
            store,
            org,
            verifier_key,
        } => commands::verify::run(&store.parse()?, org, verifier_key.as_deref()).await,
        Command::Events(EventsCommand::Export { store, after }) => {
            commands::events::export(&store.parse()?, after).await
        }
        Command::Events(EventsCommand::Import { store, file }) => {
            commands::events::import(&store.parse()?, &file).await
        }
        Command::Projections(ProjectionsCommand::Rebuild { store, key_file }) => {
            commands::projections::rebuild(&store.parse()?, &key_file).await
        }
    }
}
