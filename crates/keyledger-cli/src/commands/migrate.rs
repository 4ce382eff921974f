//! `keyledger migrate`: opening a store applies its pending migrations; this says which.

use crate::report::{Failure, Outcome};
use crate::store_url::{Backend, Create, OpenedStore, StoreUrl, applied_migrations};

pub(crate) async fn run(url: &StoreUrl) -> Result<Outcome, Failure> {
    let before = applied_migrations(url).await?;
    let opened = OpenedStore::open(url, super::throwaway_ring(), Create::IfMissing).await?;
    opened.close().await;
    let after = applied_migrations(url).await?;
    let migrator = match opened.backend {
        Backend::Sqlite(_) => &keyledger_sqlite::MIGRATOR,
        Backend::Postgres(_) => &keyledger_postgres::MIGRATOR,
    };
    let applied: Vec<String> = migrator
        .iter()
        .filter(|m| after.contains(&m.version) && !before.contains(&m.version))
        .map(|m| format!("{:04} {}", m.version, m.description))
        .collect();
    let latest = after.last().copied().unwrap_or_default();
    if applied.is_empty() {
        println!("{url} is up to date (schema version {latest})");
    } else {
        println!(
            "applied {} migration(s) to {url}: {}; schema version {latest}",
            applied.len(),
            applied.join(", ")
        );
    }
    Ok(Outcome::Done)
}
