//! One projection writer per SQLite file (ADR 0014). A server runs the projections of its file
//! without a lease (ADR 0011), so a second process writing them (another server, or
//! `keyledger projections rebuild`) would interleave with its runners. Each such process holds
//! [`WriterLock`]: an exclusive OS file lock on `<file>-keyledger.lock` beside the database,
//! released when the value drops or the process ends, however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The exclusive right to write a SQLite store's projections, held while this value lives.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

/// Why [`WriterLock::acquire`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriterLockError {
    /// Another process holds the lock: a keyledger server (or a rebuild) uses the file. Stop
    /// it, then try again.
    #[error("{} is in use by a keyledger server or another rebuild{}; stop it first", db.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse { db: PathBuf, pid: Option<u32> },
    /// The lock file could not be created, written or locked (permissions, a full disk, a file
    /// system without locks).
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The lock file of the database at `db`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-keyledger.lock");
    PathBuf::from(name)
}

impl WriterLock {
    /// Takes the lock of the database at `db` without waiting, and records this process's id
    /// in the lock file (for the message another process gets).
    pub fn acquire(db: &Path) -> Result<Self, WriterLockError> {
        let path = lock_path(db);
        let io = |source| WriterLockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                return Err(WriterLockError::InUse {
                    db: db.to_owned(),
                    pid,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keyledger.db");
        let first = WriterLock::acquire(&db).unwrap();
        match WriterLock::acquire(&db) {
            Err(WriterLockError::InUse { db: named, pid }) => {
                assert_eq!(named, db);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        WriterLock::acquire(&db).expect("free again");
    }
}
