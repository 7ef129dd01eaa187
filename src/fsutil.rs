//! File helpers the modules share.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use color_eyre::eyre::{Result, WrapErr};

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

/// A temporary directory in `parent` (the system's temporary directory when
/// `None`) that only its owner can enter: copies of descriptions and
/// scratch roots live there.
pub fn private_tempdir(parent: Option<&Path>, prefix: &str) -> Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    let dir = match parent {
        Some(p) => builder.tempdir_in(p),
        None => builder.tempdir(),
    }
    .wrap_err_with(|| {
        format!(
            "creating a work directory in {}",
            parent.map_or("the temporary directory".into(), |p| p.display().to_string())
        )
    })?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
        .wrap_err_with(|| format!("making {} private", dir.path().display()))?;
    Ok(dir)
}
