//! Files that hold secret keys (the internal key ring, the audit signing key): created new
//! with mode 0600, never over an existing file, and refused when others may read them.

use std::fs::File;
use std::io;
use std::path::Path;

/// Creates `path` for writing with mode 0600; fails if it exists.
pub fn create(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

/// The permission bits of `path` when its group or others may use it (`None`: only the owner
/// may). Always `None` where the platform has no such bits.
pub fn shared_mode(path: &Path) -> io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        Ok((mode & 0o077 != 0).then_some(mode))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path)?;
        Ok(None)
    }
}
