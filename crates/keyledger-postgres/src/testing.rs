//! Test support (feature `test-hooks`): a fresh database per test, dropped afterwards.

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

/// The server the tests use: `KEYLEDGER_TEST_POSTGRES_URL`, by default the local trust-auth
/// server.
pub fn server_url() -> String {
    std::env::var("KEYLEDGER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

/// Whether an unreachable server fails the tests (CI) instead of skipping them.
pub fn required() -> bool {
    std::env::var("KEYLEDGER_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A database created for one test, dropped (with `FORCE`) when this value drops.
#[derive(Debug)]
pub struct TestDatabase {
    server: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates a uniquely named database. `None` (after printing a notice) when the server
    /// does not answer, unless `KEYLEDGER_REQUIRE_POSTGRES=1`, which makes it a panic.
    pub async fn create(prefix: &str) -> Option<Self> {
        let server = server_url();
        let mut admin =
            match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&server)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return unavailable(&server, &e.to_string()),
                Err(_) => return unavailable(&server, "connection timed out"),
            };
        let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let url = with_database(&server, &name);
        Some(Self { server, name, url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime, where blocking on a future is not allowed: use a
        // thread with its own small runtime.
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&server).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}

fn unavailable(server: &str, why: &str) -> Option<TestDatabase> {
    let server = redact_password(server);
    if required() {
        panic!("PostgreSQL at {server} is required (KEYLEDGER_REQUIRE_POSTGRES=1) but unavailable: {why}");
    }
    eprintln!(
        "NOTICE: skipping PostgreSQL test: {server} unavailable ({why}); set KEYLEDGER_REQUIRE_POSTGRES=1 to fail instead"
    );
    None
}

/// `url` with its database path replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// The URL without its password, for messages.
fn redact_password(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    match url[start..].find('@') {
        Some(at) => {
            let userinfo = &url[start..start + at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..start], &url[start + at + 1..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_swapped_and_password_hidden() {
        assert_eq!(
            with_database("postgres://u:pw@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u:pw@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
        assert_eq!(redact_password("postgres://u:pw@h/db"), "postgres://u@h/db");
        assert_eq!(redact_password("postgres://h/db"), "postgres://h/db");
    }
}
