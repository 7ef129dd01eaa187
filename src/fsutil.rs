//! File helpers the modules share.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use color_eyre::eyre::{Result, WrapErr};

/// The most one write hands the kernel. The page cache takes a larger write
/// in large folios, and a virtual machine that gives its free memory back to
/// the host (virtio-balloon free page reporting, as on the 2-CPU machines
/// the README's numbers come from) pays a host fault for each page of a new
/// large folio. There, 1.4 GB written to a new file took 0.46 to 0.79 s in
/// writes of 16 or 32 KiB and 5 to 11 s in writes of 64 KiB to 1 MiB
/// (`dd`, the system time nearly all of it). Elsewhere, pieces this size
/// cost only more calls: about 32,000 per GB.
pub const WRITE_PIECE: usize = 32 << 10;

/// A writer that hands its inner writer at most [`WRITE_PIECE`] bytes per
/// call; put it next to the file, under any buffering.
#[derive(Debug)]
pub struct Pieces<W>(pub W);

impl<W: Write> Write for Pieces<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.write(&data[..data.len().min(WRITE_PIECE)])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Whether this process can give files any owner (it runs as root).
pub fn can_set_owners() -> bool {
    rustix::process::geteuid().is_root()
}

/// The mode to give a copy of a file with `mode`: as it is when the copy
/// keeps the file's owner, else without setuid and setgid bits, so no copy
/// hands them to a new owner.
pub fn kept_mode(mode: u32, owner_kept: bool) -> u32 {
    let mode = mode & 0o7777;
    if owner_kept {
        mode
    } else {
        mode & !0o6000
    }
}

/// A temporary directory that its run holds flocked for as long as it
/// lives, so that a later run can tell one that a killed run left
/// ([`remove_stale`]); removed when dropped, or by an interrupt.
#[derive(Debug)]
pub struct Scratch {
    // Removed before the lock goes: fields drop in order.
    dir: crate::interrupt::TempDir,
    _lock: fs::File,
}

impl Scratch {
    /// Where it is.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Renames the directory to `to` and lets go of it.
    pub fn persist(self, to: &Path) -> std::io::Result<()> {
        self.dir.persist(to)
    }
}

/// A [`Scratch`] directory named `PREFIX*` in `parent` (the system's
/// temporary directory when `None`) that only its owner can enter, created
/// so (mode 0700) rather than made so afterwards: copies of descriptions,
/// scratch roots and the credentials file live there.
pub fn private_tempdir(parent: Option<&Path>, prefix: &str) -> Result<Scratch> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).permissions(fs::Permissions::from_mode(0o700));
    let dir = crate::interrupt::TempDir::create(|| match parent {
        Some(p) => builder.tempdir_in(p),
        None => builder.tempdir(),
    })
    .wrap_err_with(|| {
        format!(
            "creating a work directory in {}",
            parent.map_or("the temporary directory".into(), |p| p.display().to_string())
        )
    })?;
    // The umask may have taken more; never less than the owner's rwx.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
        .wrap_err_with(|| format!("making {} private", dir.path().display()))?;
    let lock = fs::File::open(dir.path()).wrap_err_with(|| format!("opening {}", dir.path().display()))?;
    lock.lock()
        .wrap_err_with(|| format!("locking {}", dir.path().display()))?;
    Ok(Scratch { dir, _lock: lock })
}

/// `path` locked by us, when no live run holds it (its owner was killed, or
/// let it go): `None` when one does, or when it is gone. Temp files and
/// dirs of the store and [`Scratch`] dirs are held so for as long as their
/// run lives.
pub fn claim_if_abandoned(path: &Path) -> std::io::Result<Option<fs::File>> {
    let handle = match fs::File::open(path) {
        Ok(h) => h,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match handle.try_lock() {
        Ok(()) => Ok(Some(handle)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// How long a scratch directory is left alone after its last change, even
/// unlocked: its run may be between creating and locking it.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the [`Scratch`] directories named `PREFIX*` in `parent` (the
/// system's temporary directory when `None`) that runs killed with SIGKILL
/// left: ours (same owner), not locked by a live run, and unchanged for a
/// minute. Returns how many went; what cannot be read or removed is only
/// logged, since it is a cleanup.
pub fn remove_stale(parent: Option<&Path>, prefix: &str) -> usize {
    use std::os::unix::fs::MetadataExt;
    let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let Ok(entries) = fs::read_dir(&parent) else { return 0 };
    let me = rustix::process::geteuid().as_raw();
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().as_encoded_bytes().starts_with(prefix.as_bytes()) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let idle = meta.modified().ok().and_then(|m| m.elapsed().ok());
        if !meta.is_dir() || meta.uid() != me || idle.is_none_or(|d| d < STALE_AFTER) {
            continue;
        }
        let Ok(Some(_claimed)) = claim_if_abandoned(&path) else {
            continue;
        };
        match fs::remove_dir_all(&path) {
            Ok(()) => {
                log::debug!("removed {}, left by an interrupted run", path.display());
                removed += 1;
            }
            Err(e) => log::debug!("not removing {}: {e}", path.display()),
        }
    }
    removed
}

/// `path` made absolute with its existing part's symlinks resolved, so two
/// spellings of one place compare equal; the rest is taken as written.
pub fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = fs::canonicalize(existing) {
            let mut out = real;
            for c in rest.iter().rev() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(n) => out.push(n),
                    _ => {}
                }
            }
            return out;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Whether `path` is `dir` or lies below it, as [`resolved`] sees them.
pub fn is_inside(path: &Path, dir: &Path) -> bool {
    resolved(path).starts_with(resolved(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the size of every call it gets.
    #[derive(Debug)]
    struct Calls(Vec<u8>, Vec<usize>);

    impl Write for Calls {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.1.push(data.len());
            self.0.extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pieces_hand_over_everything_in_calls_of_at_most_32_kib() {
        let data: Vec<u8> = (0..3 * WRITE_PIECE + 17).map(|i| (i % 251) as u8).collect();
        let mut out = Pieces(Calls(Vec::new(), Vec::new()));
        out.write_all(&data).unwrap();
        let Pieces(Calls(written, calls)) = out;
        assert_eq!(written, data);
        assert_eq!(calls, vec![WRITE_PIECE, WRITE_PIECE, WRITE_PIECE, 17]);

        // Under a buffer larger than a piece, as the layer writer has it.
        let mut out = io::BufWriter::with_capacity(4 * WRITE_PIECE, Pieces(Calls(Vec::new(), Vec::new())));
        out.write_all(&data).unwrap();
        let Pieces(Calls(written, calls)) = out.into_inner().unwrap();
        assert_eq!(written, data);
        assert!(calls.iter().all(|&n| n <= WRITE_PIECE), "{calls:?}");
    }

    #[test]
    fn places_compare_by_where_they_are() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        fs::create_dir(&store).unwrap();
        std::os::unix::fs::symlink(&store, tmp.path().join("link")).unwrap();
        assert!(is_inside(&store.join("t/x"), &store));
        assert!(is_inside(&tmp.path().join("link/t"), &store), "through a symlink");
        assert!(is_inside(&tmp.path().join("other/../store/t"), &store), "through ..");
        assert!(!is_inside(&tmp.path().join("store2"), &store));
        assert!(!is_inside(&tmp.path().join("t"), &store));
    }

    #[test]
    fn private_tempdirs_are_private_from_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = private_tempdir(Some(tmp.path()), ".p-").unwrap();
        assert_eq!(fs::metadata(dir.path()).unwrap().permissions().mode() & 0o7777, 0o700);
    }

    #[test]
    fn copies_keep_setuid_only_with_their_owner() {
        assert_eq!(kept_mode(0o104755, true), 0o4755);
        assert_eq!(kept_mode(0o106755, false), 0o755);
        assert_eq!(kept_mode(0o1777, false), 0o1777);
    }
}
