//! An OCI image layout on disk: `oci-layout`, `index.json` and
//! `blobs/sha256`. Blobs are written through a temp file beside them and
//! renamed in only once their digest and size are checked; the index is
//! replaced by rename. Locking and garbage collection are the store's
//! (`crate::store`), which is built on this; scratch layouts (umoci's,
//! staging for skopeo) use it as it is.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use serde::Serialize;

use crate::fsutil::Pieces;

use super::{canonical_json, describe, empty_index, Descriptor, Digest, HashingWriter, ImageIndex, MediaType};

/// The content of `oci-layout`.
const LAYOUT_HEADER: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// An image layout directory (nothing is created until [`Layout::init`]).
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `blobs/sha256` of the layout.
    pub fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// The path of the blob `digest`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.root, digest)
    }

    /// Whether the layout has an index.
    pub fn has_index(&self) -> bool {
        self.index_path().is_file()
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// Writes what an empty layout has, where it is missing: the blob
    /// directory, `oci-layout`, and an index with no manifests. What is
    /// there already is left as it is.
    pub fn init(&self) -> Result<()> {
        let blobs = self.blob_dir();
        fs::create_dir_all(&blobs).wrap_err_with(|| format!("creating {}", blobs.display()))?;
        let header = self.root.join("oci-layout");
        if !header.exists() {
            write_atomic(&header, LAYOUT_HEADER)?;
        }
        if !self.has_index() {
            self.write_index(&empty_index())?;
        }
        Ok(())
    }

    /// Reads `index.json`.
    pub fn read_index(&self) -> Result<ImageIndex> {
        read_json(&self.index_path())
    }

    /// Replaces `index.json` by rename, as canonical JSON.
    pub fn write_index(&self, index: &ImageIndex) -> Result<()> {
        write_index_bytes(&self.index_path(), &canonical_json(index)?)
    }

    /// Reads a blob and checks that its content matches its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        read_blob(&self.root, digest)
    }

    /// Reads a verified blob and parses it as JSON.
    pub fn read_json_blob<T: serde::de::DeserializeOwned>(&self, digest: &Digest, what: &str) -> Result<T> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).wrap_err_with(|| format!("parsing {what} {digest}"))
    }

    /// Stores `value` as a canonical JSON blob of `media_type` (unless the
    /// layout has it already) and returns its descriptor.
    pub fn put_json<T: Serialize>(&self, value: &T, media_type: MediaType) -> Result<Descriptor> {
        let bytes = canonical_json(value)?;
        let desc = describe(&bytes, media_type);
        let digest = Digest::of(&bytes);
        if !self.blob_path(&digest).exists() {
            let mut writer = self.blob_writer()?;
            writer.write_all(&bytes)?;
            writer.commit(Some((&digest, bytes.len() as u64)))?;
        }
        Ok(desc)
    }

    /// A writer of a new blob, named by what is written into it.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let file = tempfile::Builder::new()
            .prefix(".tmp-blob-")
            .permissions(readable())
            .tempfile_in(self.blob_dir())
            .wrap_err_with(|| format!("creating a blob in {}", self.blob_dir().display()))?;
        Ok(BlobWriter {
            dir: self.blob_dir(),
            inner: HashingWriter::new(Pieces(file)),
        })
    }
}

/// A blob being written: a temp file in the blob directory, hashed as it
/// is written; removed when dropped uncommitted.
pub struct BlobWriter {
    dir: PathBuf,
    inner: HashingWriter<Pieces<tempfile::NamedTempFile>>,
}

impl BlobWriter {
    /// The digest and size of what was written so far.
    pub fn written(&self) -> (Digest, u64) {
        self.inner.written()
    }

    /// Syncs the blob and renames it in under its digest, after checking
    /// it against `expected` (digest and size) when given. Returns its
    /// digest and size.
    pub fn commit(self, expected: Option<(&Digest, u64)>) -> Result<(Digest, u64)> {
        let (Pieces(file), digest, size) = self.inner.finish()?;
        if let Some((want, want_size)) = expected {
            if *want != digest || want_size != size {
                bail!("the blob written is {digest} of {size} bytes, not {want} of {want_size} bytes");
            }
        }
        file.as_file().sync_all()?;
        file.persist(self.dir.join(digest.hex()))
            .map_err(|e| e.error)
            .wrap_err_with(|| format!("storing blob {digest}"))?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.inner.write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads and parses a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).wrap_err_with(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).wrap_err_with(|| format!("parsing {}", path.display()))
}

/// The path of a blob in the image layout at `layout`.
pub fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join("blobs/sha256").join(digest.hex())
}

/// Reads a blob of the layout at `layout` and checks that its content
/// matches its digest.
pub fn read_blob(layout: &Path, digest: &Digest) -> Result<Vec<u8>> {
    let path = blob_path(layout, digest);
    let bytes = fs::read(&path).wrap_err_with(|| format!("reading blob {digest}"))?;
    if Digest::of(&bytes) != *digest {
        bail!(
            "blob {} is corrupt: its content does not match its digest",
            path.display()
        );
    }
    Ok(bytes)
}

/// Writes the index `bytes` to `path` as [`write_atomic`] does, unless it
/// holds them already: an index that says what it said (an unchanged
/// re-stash tags the image it had) is neither written nor synced again.
pub fn write_index_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    write_atomic(path, bytes)
}

/// Writes `bytes` to a temp file beside `path`, syncs it and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| eyre!("{} has no parent directory", path.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(readable())
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Blobs and indexes are readable by everyone, like any image layout
/// (tempfile would make them private to root).
pub fn readable() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_layout_is_written_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("l"));
        layout.init().unwrap();
        assert_eq!(fs::read(dir.path().join("l/oci-layout")).unwrap(), LAYOUT_HEADER);
        assert_eq!(
            fs::read_to_string(dir.path().join("l/index.json")).unwrap(),
            r#"{"manifests":[],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}"#
        );
        let desc = layout
            .put_json(&serde_json::json!({"b": 1, "a": 2}), MediaType::ImageConfig)
            .unwrap();
        let mut index = layout.read_index().unwrap();
        index.set_manifests(vec![desc.clone()]);
        layout.write_index(&index).unwrap();
        layout.init().unwrap();
        assert_eq!(layout.read_index().unwrap().manifests(), std::slice::from_ref(&desc));
        let digest = Digest::try_from(desc.digest()).unwrap();
        assert_eq!(layout.read_blob(&digest).unwrap(), br#"{"a":2,"b":1}"#);
    }

    #[test]
    fn a_blob_is_committed_only_when_it_is_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.init().unwrap();
        let mut w = layout.blob_writer().unwrap();
        w.write_all(b"abc").unwrap();
        let err = w.commit(Some((&Digest::of(b"abd"), 3))).unwrap_err();
        assert!(format!("{err}").contains("not sha256:"), "{err}");
        let mut w = layout.blob_writer().unwrap();
        w.write_all(b"abc").unwrap();
        assert!(
            w.commit(Some((&Digest::of(b"abc"), 4))).is_err(),
            "a wrong size is refused"
        );
        assert_eq!(
            fs::read_dir(layout.blob_dir()).unwrap().count(),
            0,
            "nothing is left behind"
        );
        let mut w = layout.blob_writer().unwrap();
        w.write_all(b"abc").unwrap();
        let (digest, size) = w.commit(Some((&Digest::of(b"abc"), 3))).unwrap();
        assert_eq!((layout.read_blob(&digest).unwrap(), size), (b"abc".to_vec(), 3));
    }

    #[test]
    fn an_index_is_written_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        write_index_bytes(&path, b"{}").unwrap();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let first = inode(&path);
        write_index_bytes(&path, b"{}").unwrap();
        assert_eq!(inode(&path), first, "the same index was written again");
        write_index_bytes(&path, b"{\"a\":1}").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{\"a\":1}");
        assert_ne!(inode(&path), first, "a changed index is renamed into place");
    }
}
