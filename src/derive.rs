//! Derived descriptions (W4): merge a description that says
//! `derived_from="REF"` into the one stored in that image, with the files
//! of both, and write the result as a description directory.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use color_eyre::Section;

use crate::description::{self, Document};
use crate::oci;
use crate::reference::ImageReference;
use crate::restore::StackedLayer;
use crate::tree::{clean_path, CompleteTar, OPAQUE, WHITEOUT};

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
        let base = raw
            .parse::<ImageReference>()
            .wrap_err_with(|| format!("{}: derived_from={raw:?} is not an image reference", file.display()))?;
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Derived {
            doc,
            file: file.to_path_buf(),
            dir,
            base,
        })
    }
}

/// Copies the tree `from` into `to` as it is (symlinks as symlinks), leaving
/// out `skip` (a file of `from`).
pub fn copy_tree(from: &Path, to: &Path, skip: Option<&Path>) -> Result<()> {
    for entry in walkdir::WalkDir::new(from).follow_links(false) {
        let entry = entry.wrap_err_with(|| format!("reading {}", from.display()))?;
        if Some(entry.path()) == skip {
            continue;
        }
        let rel = entry.path().strip_prefix(from).unwrap_or(entry.path());
        let dest = to.join(rel);
        let ft = entry.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&dest).wrap_err_with(|| format!("creating {}", dest.display()))?;
            continue;
        }
        if dest.symlink_metadata().is_ok() {
            fs::remove_file(&dest).wrap_err_with(|| format!("replacing {}", dest.display()))?;
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &dest)?;
        } else {
            fs::copy(entry.path(), &dest).wrap_err_with(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Refuses symlinks in `dir` that point outside it: they would carry files
/// of the build host into the image.
pub fn check_symlinks(dir: &Path) -> Result<()> {
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
            return Err(eyre!(
                "{} points outside the description ({})",
                entry.path().display(),
                target.display()
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
    check_symlinks(&derived.dir)?;
    let merged = description::merge(&base, &derived.doc)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).wrap_err_with(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new().prefix(".merged-").tempdir_in(parent)?;
    copy_tree(base_dir, tmp.path(), Some(&base_file))?;
    copy_tree(&derived.dir, tmp.path(), Some(&derived.file))?;
    merged.write_to(&tmp.path().join("config.xml"))?;
    let kept = tmp.keep();
    fs::rename(&kept, out).wrap_err_with(|| format!("writing {}", out.display()))?;
    Ok(merged)
}

/// Extracts the `image/` directory (the stored description) of the image
/// made of `layers` into `dest/image`, whiteouts applied, without root.
pub fn extract_image_dir(layers: &[StackedLayer], dest: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dest).wrap_err_with(|| format!("creating {}", dest.display()))?;
    for l in layers {
        let file = fs::File::open(oci::blob_path(&l.layout, &l.layer.digest))
            .wrap_err_with(|| format!("opening layer {}", l.layer.digest))?;
        let plain = oci::decompress(BufReader::new(file), oci::LayerCompression::of(&l.layer.media_type))?;
        let mut archive = tar::Archive::new(CompleteTar::new(plain));
        for entry in archive.entries().wrap_err("reading layer")? {
            let mut entry = entry.wrap_err("reading layer")?;
            let path = clean_path(&entry.path_bytes());
            if !(path == b"image" || path.starts_with(b"image/")) {
                continue;
            }
            let rel = PathBuf::from(OsStr::from_bytes(&path));
            let base = rel.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
            if base == OPAQUE {
                let dir = dest.join(rel.parent().unwrap_or(Path::new("")));
                let _ = fs::remove_dir_all(&dir);
                fs::create_dir_all(&dir)?;
            } else if let Some(hidden) = base.strip_prefix(WHITEOUT) {
                let victim = dest
                    .join(rel.parent().unwrap_or(Path::new("")))
                    .join(OsStr::from_bytes(hidden));
                let _ = fs::remove_dir_all(&victim).or_else(|_| fs::remove_file(&victim));
            } else {
                entry.set_preserve_permissions(true);
                entry
                    .unpack_in(dest)
                    .wrap_err_with(|| format!("extracting {}", rel.display()))?;
            }
        }
        io::copy(&mut archive.into_inner(), &mut io::sink())?;
    }
    let image = dest.join("image");
    if !image.join("config.xml").is_file() {
        bail!("the base image has no /image/config.xml: it is not a KIWI root tree");
    }
    Ok(image)
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
