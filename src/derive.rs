//! Derived descriptions (W4): merge a description that says
//! `derived_from="REF"` into the one stored in that image, with the files
//! of both, and write the result as a description directory.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use color_eyre::Section;

use crate::description::{self, Document};
use crate::fsutil::kept_mode;
use crate::layer::read::Change;
use crate::layer::{extract, is_within, show_path, Kind, StackedLayer};
use crate::reference::ImageReference;

/// A derived description as the user gave it.
#[derive(Debug, Clone)]
pub struct Derived {
    /// The parsed description.
    pub doc: Document,
    /// Its file.
    pub file: PathBuf,
    /// The directory beside it, whose files overlay the base's.
    pub dir: PathBuf,
    /// Its base image.
    pub base: ImageReference,
}

impl Derived {
    /// Checks `doc` (from `file`) as a derived description before anything is
    /// fetched: known elements, required attributes, a valid `derived_from`.
    pub fn new(doc: Document, file: &Path) -> Result<Derived> {
        let raw = doc
            .derived_from()
            .ok_or_else(|| eyre!("{} has no derived_from", file.display()))?
            .to_string();
        description::check_derived(&doc)?;
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        check_copyable(&dir)?;
        check_symlinks(&dir)?;
        let base = raw
            .parse::<ImageReference>()
            .wrap_err_with(|| format!("{}: derived_from={raw:?} is not an image reference", file.display()))?;
        Ok(Derived {
            doc,
            file: file.to_path_buf(),
            dir,
            base,
        })
    }
}

/// Refuses what a description cannot hold: FIFOs (reading one would hang
/// kiwi-ng), sockets and device nodes. Checked before anything slow starts.
pub fn check_copyable(dir: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.wrap_err_with(|| format!("reading {}", dir.display()))?;
        let ft = entry.file_type();
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device node"
        } else {
            continue;
        };
        return Err(eyre!(
            "{} is {what}: a description holds only files, directories and symlinks",
            show_path(entry.path())
        ))
        .suggestion("remove it from the description directory");
    }
    Ok(())
}

/// Copies the tree `from` over `to` (created by the caller), leaving out
/// `skip` (a file of `from`): what `from` has replaces what `to` has.
/// Owners, modes and times are kept; where the owner cannot be kept (not
/// running as root), setuid and setgid bits are dropped, so no copy hands
/// them to a new owner. `from` has passed [`check_copyable`].
pub fn copy_tree(from: &Path, to: &Path, skip: Option<&Path>) -> Result<()> {
    let owners = crate::fsutil::can_set_owners();
    let mut dirs = Vec::new();
    for entry in walkdir::WalkDir::new(from).follow_links(false) {
        let entry = entry.wrap_err_with(|| format!("reading {}", from.display()))?;
        if Some(entry.path()) == skip {
            continue;
        }
        let rel = entry.path().strip_prefix(from).unwrap_or(entry.path());
        let dest = to.join(rel);
        let md = entry
            .metadata()
            .wrap_err_with(|| format!("reading {}", entry.path().display()))?;
        let ft = md.file_type();
        let existing = dest.symlink_metadata().ok();
        if let Some(e) = &existing {
            let keep_dir = ft.is_dir() && e.is_dir();
            if !keep_dir {
                let removed = if e.is_dir() {
                    fs::remove_dir_all(&dest)
                } else {
                    fs::remove_file(&dest)
                };
                removed.wrap_err_with(|| format!("replacing {}", dest.display()))?;
            }
        }
        let copied = if ft.is_dir() {
            if !dest.is_dir() {
                fs::create_dir(&dest).wrap_err_with(|| format!("creating {}", dest.display()))?;
            }
            dirs.push((dest.clone(), md.clone()));
            Ok(())
        } else if ft.is_symlink() {
            let target = fs::read_link(entry.path())?;
            std::os::unix::fs::symlink(&target, &dest)
                .and_then(|()| {
                    if owners {
                        std::os::unix::fs::lchown(&dest, Some(md.uid()), Some(md.gid()))
                    } else {
                        Ok(())
                    }
                })
                .map_err(Into::into)
        } else if ft.is_file() {
            copy_file(entry.path(), &dest, &md, owners)
        } else {
            Err(eyre!("{} is not a file, directory or symlink", show_path(entry.path())))
        };
        copied.wrap_err_with(|| format!("copying {} to {}", show_path(entry.path()), show_path(&dest)))?;
        set_times(&dest, &md)?;
    }
    // Directories last, deepest first: their modes could forbid writing in
    // them, and writing in them changes their times.
    for (dest, md) in dirs.iter().rev() {
        if owners {
            std::os::unix::fs::lchown(dest, Some(md.uid()), Some(md.gid()))?;
        }
        fs::set_permissions(dest, fs::Permissions::from_mode(kept_mode(md.mode(), owners)))?;
        set_times(dest, md)?;
    }
    Ok(())
}

fn copy_file(src: &Path, dest: &Path, md: &fs::Metadata, owners: bool) -> Result<()> {
    let mut from = fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(src)?;
    let mut to = fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)?;
    io::copy(&mut from, &mut to)?;
    // Owner first: chown clears setuid bits.
    if owners {
        std::os::unix::fs::fchown(&to, Some(md.uid()), Some(md.gid()))?;
    }
    to.set_permissions(fs::Permissions::from_mode(kept_mode(md.mode(), owners)))?;
    Ok(())
}

fn set_times(path: &Path, md: &fs::Metadata) -> Result<()> {
    let t = rustix::fs::Timespec {
        tv_sec: md.mtime(),
        tv_nsec: md.mtime_nsec(),
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .wrap_err_with(|| format!("setting the times of {}", path.display()))
}

/// Refuses symlinks in `dir` that point outside it: they would carry files
/// of the build host into the image.
pub fn check_symlinks(dir: &Path) -> Result<()> {
    check_symlinks_as(dir, dir)
}

/// [`check_symlinks`], naming the links as below `label` (`/image` for the
/// description stored in an image).
fn check_symlinks_as(dir: &Path, label: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.wrap_err_with(|| format!("reading {}", dir.display()))?;
        if !entry.file_type().is_symlink() {
            continue;
        }
        let target = fs::read_link(entry.path())?;
        let rel_parent = entry
            .path()
            .parent()
            .and_then(|p| p.strip_prefix(dir).ok())
            .unwrap_or(Path::new(""));
        if target.is_absolute() || escapes(&rel_parent.join(&target)) {
            let shown = label.join(entry.path().strip_prefix(dir).unwrap_or(entry.path()));
            return Err(eyre!(
                "{} points outside the description ({})",
                show_path(&shown),
                show_path(&target)
            ))
            .suggestion("copy the file into the description directory instead of linking to it");
        }
    }
    Ok(())
}

fn escapes(path: &Path) -> bool {
    let mut depth: i64 = 0;
    for c in path.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// Writes the merged description into `out` (which must not exist): the
/// base's files, the derived description's files over them, and the merged
/// `config.xml`. Returns the merged document.
pub fn write_merged(base_dir: &Path, derived: &Derived, out: &Path) -> Result<Document> {
    let base_file = description::find(base_dir)?;
    let base = Document::parse_file(&base_file)?;
    let merged = description::merge(&base, &derived.doc)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).wrap_err_with(|| format!("creating {}", parent.display()))?;
    let tmp = crate::fsutil::private_tempdir(Some(parent), ".merged-")?;
    copy_tree(base_dir, tmp.path(), Some(&base_file))?;
    copy_tree(&derived.dir, tmp.path(), Some(&derived.file))?;
    merged.write_to(&tmp.path().join("config.xml"))?;
    tmp.persist(out)
        .wrap_err_with(|| format!("writing {}", out.display()))?;
    Ok(merged)
}

/// Unpacks the `image/` directory (the stored description) of the image
/// made of `layers` into the scratch root `dest` (which must not exist),
/// through the confined unpacker, every blob verified; no root needed. What
/// a description cannot hold (devices, FIFOs, symlinks out of it) is refused.
pub fn extract_image_dir(layers: &[StackedLayer], dest: &Path) -> Result<PathBuf> {
    unpack_image_dir(layers, dest)?;
    kiwi_root_check(dest, &"the image")?;
    check_image_symlinks(dest)?;
    Ok(dest.join("image"))
}

/// Unpacks what [`extract_image_dir`] does, without checking that it is a
/// description: devices and FIFOs are refused already.
pub fn unpack_image_dir(layers: &[StackedLayer], dest: &Path) -> Result<()> {
    let mut keep = |change: &Change| -> Result<bool> {
        let path = change.path();
        if !(is_within(path, b"image") || path.is_empty()) {
            return Ok(false);
        }
        if let Change::Put { meta, .. } = change {
            if matches!(meta.kind, Kind::Char { .. } | Kind::Block { .. } | Kind::Fifo) {
                bail!(
                    "it is a {} in the stored description, which holds only files, directories and symlinks",
                    meta.kind.word()
                );
            }
        }
        Ok(true)
    };
    extract::unpack_filtered(layers, dest, &mut keep)
}

/// Refuses symlinks in the `/image` of the root tree `root` that point out
/// of it, naming them as `/image/...`.
pub fn check_image_symlinks(root: &Path) -> Result<()> {
    check_symlinks_as(&root.join("image"), Path::new("/image"))
}

/// Checks that the root tree `root` holds a KIWI description: `image` a
/// directory and `image/config.xml` a file, both inside the root itself
/// (a symlink there is not followed).
pub fn kiwi_root_check(root: &Path, name: &dyn std::fmt::Display) -> Result<()> {
    if !is_kiwi_root(root) {
        bail!("{name} is not a KIWI root tree: it has no /image/config.xml");
    }
    Ok(())
}

/// Whether `root` is a KIWI root tree, as [`kiwi_root_check`] decides.
pub fn is_kiwi_root(root: &Path) -> bool {
    let image = root.join("image");
    let is_dir = image.symlink_metadata().is_ok_and(|m| m.is_dir());
    is_dir && image.join("config.xml").symlink_metadata().is_ok_and(|m| m.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_paths_are_found() {
        for (p, want) in [
            ("a/b", false),
            ("a/../b", false),
            ("../b", true),
            ("a/../../b", true),
            ("./x", false),
        ] {
            assert_eq!(escapes(Path::new(p)), want, "{p}");
        }
    }

    #[test]
    fn symlinks_out_of_the_description_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("root")).unwrap();
        std::os::unix::fs::symlink("../config.sh", dir.path().join("root/ok")).unwrap();
        check_symlinks(dir.path()).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.path().join("root/bad")).unwrap();
        assert!(check_symlinks(dir.path())
            .unwrap_err()
            .to_string()
            .contains("points outside"));
        fs::remove_file(dir.path().join("root/bad")).unwrap();
        std::os::unix::fs::symlink("../../secret", dir.path().join("root/up")).unwrap();
        assert!(check_symlinks(dir.path()).is_err());
    }
}
