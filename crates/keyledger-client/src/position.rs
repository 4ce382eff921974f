//! Where the stream consumer keeps its place: a [`Checkpoint`], the last position applied
//! together with the key directory folded up to it.
//!
//! The two are stored together on purpose. The directory lives in memory and is built by
//! folding the stream; a position stored alone would let a restarted client resume after
//! events it never folded (an organization enabled, rotated or revoked before the restart
//! would be unknown). A checkpoint resumes both, consistently.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::directory::KeyDirectory;

/// The consumer's place in the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The base URL of the keyledger the stream came from: a checkpoint of another server
    /// (or another test run) is not resumed.
    pub base_url: String,
    /// The last position applied (the `id` of the last SSE message folded).
    pub position: u64,
    /// The directory folded up to `position`.
    pub directory: KeyDirectory,
}

/// Loads and saves the consumer's [`Checkpoint`]. Synchronous: a checkpoint is small and is
/// saved at most a few times a second, when the stream pauses.
pub trait PositionStore: Send + Sync + std::fmt::Debug + 'static {
    /// The last checkpoint saved, or `None` before the first.
    fn load(&self) -> io::Result<Option<Checkpoint>>;
    /// Replaces the checkpoint. A crash during a save leaves the previous one whole.
    fn save(&self, checkpoint: &Checkpoint) -> io::Result<()>;
}

/// A shared store (a test keeps a handle to look at what was saved, or hands it to the next
/// client).
impl<T: PositionStore + ?Sized> PositionStore for std::sync::Arc<T> {
    fn load(&self) -> io::Result<Option<Checkpoint>> {
        (**self).load()
    }

    fn save(&self, checkpoint: &Checkpoint) -> io::Result<()> {
        (**self).save(checkpoint)
    }
}

/// A checkpoint in a JSON file, replaced atomically: written to a temporary file in the same
/// directory, synced, then renamed over the old one.
#[derive(Debug, Clone)]
pub struct FilePositionStore {
    path: PathBuf,
}

impl FilePositionStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A temporary file name of its own for each save (clients of one process may share a
    /// file; each save renames a whole file over it).
    fn temp_path(&self) -> PathBuf {
        static SAVES: AtomicU64 = AtomicU64::new(0);
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "checkpoint".into());
        let n = SAVES.fetch_add(1, Ordering::Relaxed);
        name.push(format!(".tmp-{}-{n}", std::process::id()));
        self.path.with_file_name(name)
    }
}

impl PositionStore for FilePositionStore {
    fn load(&self) -> io::Result<Option<Checkpoint>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn save(&self, checkpoint: &Checkpoint) -> io::Result<()> {
        use std::io::Write as _;
        let bytes = serde_json::to_vec(checkpoint).map_err(io::Error::other)?;
        let temp = self.temp_path();
        let written = (|| {
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written?;
        // Make the rename itself durable where the platform allows opening a directory.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// A checkpoint in memory: for tests, and for services that rebuild from the start of the
/// stream at every start.
#[derive(Debug, Default)]
pub struct MemoryPositionStore {
    checkpoint: Mutex<Option<Checkpoint>>,
}

impl MemoryPositionStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl PositionStore for MemoryPositionStore {
    fn load(&self) -> io::Result<Option<Checkpoint>> {
        Ok(self.checkpoint.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn save(&self, checkpoint: &Checkpoint) -> io::Result<()> {
        *self.checkpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(checkpoint.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(position: u64) -> Checkpoint {
        Checkpoint {
            base_url: "https://keyledger.test/".into(),
            position,
            directory: KeyDirectory::new(),
        }
    }

    fn round_trip(store: &dyn PositionStore) {
        assert_eq!(store.load().unwrap(), None);
        store.save(&checkpoint(5)).unwrap();
        assert_eq!(store.load().unwrap(), Some(checkpoint(5)));
        store.save(&checkpoint(9)).unwrap();
        assert_eq!(store.load().unwrap().unwrap().position, 9);
    }

    #[test]
    fn memory_store_round_trips() {
        round_trip(&MemoryPositionStore::new());
    }

    #[test]
    fn file_store_round_trips_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilePositionStore::new(dir.path().join("position.json"));
        round_trip(&store);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("position.json")]);
        // A new store over the same file resumes.
        let again = FilePositionStore::new(dir.path().join("position.json"));
        assert_eq!(again.load().unwrap().unwrap().position, 9);
    }

    #[test]
    fn a_save_cut_short_keeps_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("position.json");
        let store = FilePositionStore::new(&path);
        store.save(&checkpoint(3)).unwrap();
        // A crash between the write and the rename leaves a partial temporary file only.
        let partial = serde_json::to_vec(&checkpoint(4)).unwrap();
        std::fs::write(store.temp_path(), &partial[..partial.len() / 2]).unwrap();
        assert_eq!(store.load().unwrap().unwrap().position, 3);
        store.save(&checkpoint(5)).unwrap();
        assert_eq!(store.load().unwrap().unwrap().position, 5);
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("position.json");
        std::fs::write(&path, b"{not json").unwrap();
        let e = FilePositionStore::new(&path).load().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
