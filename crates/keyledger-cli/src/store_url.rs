//! Opening an event store from a URL: `sqlite://PATH` (relative or absolute) or
//! `postgres://…` / `postgresql://…`, with the backend's projection sink.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::Arc;

use keyledger_domain::GlobalPosition;
use keyledger_postgres::{PgProjections, PostgresOptions, PostgresStore};
use keyledger_projection::ProjectionSink;
use keyledger_sqlite::{SqliteProjections, SqliteStore};
use keyledger_store::{EventStore, KeyRing};
use sqlx::Connection as _;

use crate::report::Failure;

/// A parsed store URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum StoreUrl {
    Sqlite(PathBuf),
    /// The URL as given (it may hold a password: show it only through `Display`).
    Postgres(String),
}

impl StoreUrl {
    pub(crate) fn parse(url: &str) -> Result<Self, Failure> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_owned()));
        }
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if rest.is_empty() {
                return Err(Failure::msg("bad store URL", "sqlite:// needs a file path"));
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(rest)));
        }
        // Only the scheme is shown: the rest may hold a password.
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        Err(Failure::msg(
            "bad store URL",
            format!("unknown scheme {scheme:?}; use sqlite://PATH or postgres://USER@HOST/DATABASE"),
        ))
    }
}

/// Shown without a password.
impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreUrl::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// The URL with any password removed: the user-info password and a `password` query
/// parameter. A URL that does not parse (a password holding `/` or `@` unescaped, say) is
/// shown as its scheme alone, since there is no telling where the password ends.
fn redact_password(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        let scheme = raw.split_once("://").map_or("postgres", |(s, _)| s);
        return format!("{scheme}://(an unparsable URL, not shown)");
    };
    let _ = url.set_password(None);
    if url.query_pairs().any(|(k, _)| k.eq_ignore_ascii_case("password")) {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("password"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    url.to_string()
}

/// Whether opening may create a SQLite file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// `migrate` and `events import` start new stores.
    IfMissing,
    /// Reading commands refuse a missing file instead of creating an empty store.
    No,
}

/// The backend behind an [`OpenedStore`].
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// An open store (migrations applied) with its projection sink.
#[derive(Clone)]
pub(crate) struct OpenedStore {
    pub backend: Backend,
    pub store: Arc<dyn EventStore>,
    pub sink: Arc<dyn ProjectionSink>,
}

impl fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedStore")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl OpenedStore {
    /// Opens the store at `url`, applying pending migrations, sealing and opening with `ring`;
    /// a PostgreSQL pool gets the default options (those of `keyledger serve`).
    pub(crate) async fn open(url: &StoreUrl, ring: Arc<KeyRing>, create: Create) -> Result<Self, Failure> {
        Self::open_with(url, ring, create, PostgresOptions::default()).await
    }

    /// [`OpenedStore::open`] with the PostgreSQL pool given by `postgres`.
    pub(crate) async fn open_with(
        url: &StoreUrl,
        ring: Arc<KeyRing>,
        create: Create,
        postgres: PostgresOptions,
    ) -> Result<Self, Failure> {
        let failed = |e: &keyledger_store::StoreError| Failure::new(format!("cannot open store {url}"), e);
        match url {
            StoreUrl::Sqlite(path) => {
                if create == Create::No && !path.exists() {
                    return Err(Failure::msg(
                        format!("cannot open store {url}"),
                        format!("{} does not exist", path.display()),
                    ));
                }
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Failure::new(format!("cannot create the directory {}", dir.display()), &e)
                    })?;
                }
                let store = SqliteStore::open(path, ring).await.map_err(|e| failed(&e))?;
                Ok(Self {
                    sink: Arc::new(SqliteProjections::new(&store)),
                    store: Arc::new(store.clone()),
                    backend: Backend::Sqlite(store),
                })
            }
            StoreUrl::Postgres(raw) => {
                let store = PostgresStore::connect_with(raw, ring, postgres)
                    .await
                    .map_err(|e| failed(&e))?;
                Ok(Self {
                    sink: Arc::new(PgProjections::new(&store)),
                    store: Arc::new(store.clone()),
                    backend: Backend::Postgres(store),
                })
            }
        }
    }

    /// The position of the last committed event (`None`: no event). On PostgreSQL a reader's
    /// fence may hold the last events back for as long as a transaction older than their own
    /// stays open on the server; readers that must reach the end wait for this position.
    pub(crate) async fn last_position(&self) -> Result<Option<GlobalPosition>, Failure> {
        let last: Option<i64> = match &self.backend {
            Backend::Sqlite(s) => {
                sqlx::query_scalar("SELECT max(position) FROM events")
                    .fetch_one(s.read_pool())
                    .await
            }
            Backend::Postgres(s) => {
                sqlx::query_scalar("SELECT max(position) FROM events")
                    .fetch_one(s.pool())
                    .await
            }
        }
        .map_err(|e| Failure::new("cannot read the last position", &e))?;
        Ok(last.map(|p| GlobalPosition(u64::try_from(p).unwrap_or_default())))
    }

    /// Flushes and closes (a SQLite store checkpoints its WAL).
    pub(crate) async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(s) => s.close().await,
            Backend::Postgres(s) => s.pool().close().await,
        }
    }
}

/// The migration versions recorded as applied in the store at `url`, without applying any
/// (an absent SQLite file or migrations table: none).
pub(crate) async fn applied_migrations(url: &StoreUrl) -> Result<BTreeSet<i64>, Failure> {
    let failed = |e: sqlx::Error| Failure::new(format!("cannot read the migrations of {url}"), &e);
    match url {
        StoreUrl::Sqlite(path) => {
            if !path.exists() {
                return Ok(BTreeSet::new());
            }
            let options = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite://")
                .map_err(failed)?
                .filename(path)
                .read_only(true);
            let mut c = sqlx::SqliteConnection::connect_with(&options)
                .await
                .map_err(failed)?;
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
            )
            .fetch_one(&mut c)
            .await
            .map_err(failed)?;
            let versions: Vec<i64> = if exists {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(&mut c)
                    .await
                    .map_err(failed)?
            } else {
                vec![]
            };
            let _ = c.close().await;
            Ok(versions.into_iter().collect())
        }
        StoreUrl::Postgres(raw) => {
            let mut c = sqlx::PgConnection::connect(raw).await.map_err(failed)?;
            let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&mut c)
                .await
                .map_err(failed)?;
            let versions: Vec<i64> = if exists {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(&mut c)
                    .await
                    .map_err(failed)?
            } else {
                vec![]
            };
            let _ = c.close().await;
            Ok(versions.into_iter().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_show_no_password() {
        assert_eq!(
            StoreUrl::parse("sqlite://data/k.db").unwrap(),
            StoreUrl::Sqlite(PathBuf::from("data/k.db"))
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///abs/k.db").unwrap(),
            StoreUrl::Sqlite(PathBuf::from("/abs/k.db"))
        );
        let pg = StoreUrl::parse("postgresql://u:hunter2@h:5432/db").unwrap();
        assert_eq!(pg.to_string(), "postgresql://u@h:5432/db");
        assert!(!format!("{pg:?}").contains("hunter2"));
        for (raw, shown) in [
            ("postgres://u@h/db?password=hunter2", "postgres://u@h/db"),
            (
                "postgres://u@h/db?sslmode=disable&PASSWORD=hunter2",
                "postgres://u@h/db?sslmode=disable",
            ),
            (
                "postgres://u:a/hunter2@h/db",
                "postgres://(an unparsable URL, not shown)",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
        ] {
            assert_eq!(StoreUrl::parse(raw).unwrap().to_string(), shown, "{raw}");
        }
        assert!(StoreUrl::parse("sqlite://").is_err());
        let Err(bad) = StoreUrl::parse("mysql://u:hunter2@h/db") else {
            panic!("mysql is not a store")
        };
        assert!(!format!("{bad:?}").contains("hunter2"));
    }
}
