//! The local stash store: one OCI image layout for all stashes, refs named
//! `name:tag` in `index.json`.
//!
//! Every change takes an exclusive lock on the store, writes new blobs beside
//! the index, and then replaces `index.json` by rename, so a crash or kill at
//! any moment leaves every tag that existed before readable.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use color_eyre::eyre::{eyre, Result, WrapErr};
use color_eyre::Section;
use serde::Serialize;

use crate::oci::{self, Descriptor, Digest, ImageConfig, Index, Manifest, MEDIA_INDEX, MEDIA_MANIFEST, REF_NAME};

/// Where the store lives when neither `--stash-home` nor
/// `KIWI_STACKBUILD_HOME` says otherwise.
pub const DEFAULT_HOME: &str = "/var/lib/kiwi-stackbuild/stash";

/// The local store of stashes.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A held lock on the store; released when dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// One image of the store, as `stash --list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// `name:tag`.
    pub reference: String,
    /// Digest of the manifest.
    pub digest: Digest,
    /// Creation time of the image.
    pub created: Option<String>,
    /// Number of layers.
    pub layers: usize,
    /// Compressed size of all layers in bytes.
    pub size: u64,
    /// The images this one was built on, as recorded in its labels.
    pub base: Option<String>,
    /// All labels of the image.
    pub labels: BTreeMap<String, String>,
}

impl Store {
    /// The store at `root` (nothing is created yet).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `blobs/sha256` of the store.
    pub fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// Whether the store has been created.
    pub fn exists(&self) -> bool {
        self.root.join("index.json").is_file()
    }

    /// Writes the layout's files where they are missing; needs the lock.
    fn create(&self, _lock: &Lock) -> Result<()> {
        let context = || format!("creating the stash store {}", self.root.display());
        let layout = self.root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).wrap_err_with(context)?;
        }
        if !self.exists() {
            let index = Index {
                schema_version: 2,
                media_type: Some(MEDIA_INDEX.into()),
                ..Index::default()
            };
            write_atomic(&self.root.join("index.json"), &serde_json::to_vec(&index)?).wrap_err_with(context)?;
        }
        Ok(())
    }

    /// Creates the store if needed and takes its exclusive lock. What runs
    /// killed left behind (temp files of layers, blobs and pulls) is removed
    /// then: no other writer can be at work.
    pub fn lock_exclusive(&self) -> Result<Lock> {
        fs::create_dir_all(self.blob_dir())
            .wrap_err_with(|| format!("creating the stash store {}", self.root.display()))
            .suggestion("choose a writable place with --stash-home or KIWI_STACKBUILD_HOME")?;
        let dir = self.lock_handle()?;
        dir.lock()
            .wrap_err_with(|| format!("locking {}", self.root.display()))?;
        let lock = Lock { _file: dir };
        self.remove_leftovers(&lock)?;
        self.create(&lock)?;
        Ok(lock)
    }

    /// Takes the shared lock of an existing store, so no change runs while
    /// we read; `None` when there is no store yet. Needs only read access, so
    /// it works on a read-only store and for any user who can read it.
    pub fn lock_shared(&self) -> Result<Option<Lock>> {
        if !self.exists() {
            return Ok(None);
        }
        let dir = self.lock_handle()?;
        dir.lock_shared()
            .wrap_err_with(|| format!("locking {}", self.root.display()))?;
        Ok(Some(Lock { _file: dir }))
    }

    /// The store directory itself, which is what is locked: unlike a lock
    /// file it cannot be removed while the store is in use, and opening it
    /// needs no write access.
    fn lock_handle(&self) -> Result<File> {
        File::open(&self.root)
            .wrap_err_with(|| format!("opening the stash store {}", self.root.display()))
            .suggestion("the store must be readable: run as root or choose another --stash-home")
    }

    /// Removes the `.tmp-*` files and directories killed runs left in the
    /// store and its blob directory.
    fn remove_leftovers(&self, _lock: &Lock) -> Result<()> {
        for dir in [self.root.clone(), self.blob_dir()] {
            for entry in fs::read_dir(&dir).wrap_err_with(|| format!("reading {}", dir.display()))? {
                let entry = entry?;
                if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                let path = entry.path();
                let gone = if entry.file_type()?.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                gone.wrap_err_with(|| format!("removing {}, left by an interrupted run", path.display()))?;
                log::debug!("removed {}, left by an interrupted run", path.display());
            }
        }
        Ok(())
    }

    /// The store's index (empty when there is no store).
    pub fn index(&self) -> Result<Index> {
        if !self.exists() {
            return Ok(Index {
                schema_version: 2,
                media_type: Some(MEDIA_INDEX.into()),
                ..Index::default()
            });
        }
        oci::read_json(&self.root.join("index.json"))
    }

    /// Replaces the index by rename. Needs the exclusive lock.
    pub fn write_index(&self, index: &Index, _lock: &Lock) -> Result<()> {
        let bytes = serde_json::to_vec(index)?;
        write_atomic(&self.root.join("index.json"), &bytes).wrap_err("updating the store index")
    }

    /// The manifest descriptor tagged `key` (`name:tag`).
    pub fn find(&self, index: &Index, key: &str) -> Option<Descriptor> {
        index
            .manifests
            .iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(key))
            .cloned()
    }

    /// The newest ref of `name` (the one written last), any tag.
    pub fn latest_of(&self, index: &Index, name: &str) -> Option<Descriptor> {
        let prefix = format!("{name}:");
        index
            .manifests
            .iter()
            .rev()
            .find(|d| d.annotations.get(REF_NAME).is_some_and(|r| r.starts_with(&prefix)))
            .cloned()
    }

    /// Every `name:tag` of `name` in `index`, in index order.
    pub fn tags_of(&self, index: &Index, name: &str) -> Vec<String> {
        index
            .manifests
            .iter()
            .filter_map(|d| d.annotations.get(REF_NAME))
            .filter(|r| r.split(':').next() == Some(name))
            .cloned()
            .collect()
    }

    /// Reads and verifies a manifest.
    pub fn manifest(&self, digest: &Digest) -> Result<Manifest> {
        let bytes = oci::read_blob(&self.root, digest)?;
        serde_json::from_slice(&bytes).wrap_err_with(|| format!("parsing manifest {digest}"))
    }

    /// Reads and verifies an image config.
    pub fn config(&self, digest: &Digest) -> Result<ImageConfig> {
        let bytes = oci::read_blob(&self.root, digest)?;
        serde_json::from_slice(&bytes).wrap_err_with(|| format!("parsing image config {digest}"))
    }

    /// Stores a JSON blob and returns its descriptor.
    pub fn put_json<T: Serialize>(&self, value: &T, media_type: &str) -> Result<Descriptor> {
        let bytes = serde_json::to_vec(value)?;
        let digest = Digest::of(&bytes);
        let path = oci::blob_path(&self.root, &digest);
        if !path.exists() {
            write_atomic(&path, &bytes).wrap_err_with(|| format!("storing blob {digest}"))?;
        }
        Ok(Descriptor {
            media_type: media_type.into(),
            digest,
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        })
    }

    /// Points `key` at `manifest` in `index` (replacing an old target).
    pub fn set_ref(index: &mut Index, key: &str, mut manifest: Descriptor) {
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(key));
        manifest.annotations.insert(REF_NAME.into(), key.into());
        index.manifests.push(manifest);
    }

    /// Every image in the store, in index order.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let index = self.index()?;
        let mut out = Vec::new();
        for d in &index.manifests {
            let Some(reference) = d.annotations.get(REF_NAME) else {
                continue;
            };
            if d.media_type != MEDIA_MANIFEST {
                continue;
            }
            let manifest = self
                .manifest(&d.digest)
                .wrap_err_with(|| format!("reading {reference}"))?;
            let config = self
                .config(&manifest.config.digest)
                .wrap_err_with(|| format!("reading {reference}"))?;
            let labels = config.labels();
            out.push(Entry {
                reference: reference.clone(),
                digest: d.digest.clone(),
                created: config.created.clone(),
                layers: manifest.layers.len(),
                size: manifest.layers.iter().map(|l| l.size).sum(),
                base: labels.get(crate::labels::BASES).cloned(),
                labels,
            });
        }
        Ok(out)
    }

    /// Removes `key` and every blob no remaining ref uses.
    pub fn remove(&self, key: &str) -> Result<usize> {
        if !self.exists() {
            return Err(eyre!("no stash {key} in {}", self.root.display())).suggestion("the store is empty");
        }
        let lock = self.lock_exclusive()?;
        let mut index = self.index()?;
        if self.find(&index, key).is_none() {
            let known: Vec<&str> = index
                .manifests
                .iter()
                .filter_map(|d| d.annotations.get(REF_NAME))
                .map(String::as_str)
                .collect();
            return Err(eyre!("no stash {key} in {}", self.root.display())).suggestion(if known.is_empty() {
                "the store is empty".to_string()
            } else {
                format!("stashes: {}", known.join(", "))
            });
        }
        Store::remove_ref(&mut index, key);
        self.write_index(&index, &lock)?;
        self.collect_garbage(&index, &lock)
    }

    fn remove_ref(index: &mut Index, key: &str) {
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(key));
    }

    /// Deletes blobs that no manifest of `index` reaches, cached trees of
    /// images that are gone, and what killed runs left. Returns how many
    /// blobs went.
    pub fn collect_garbage(&self, index: &Index, _lock: &Lock) -> Result<usize> {
        let mut keep = HashSet::new();
        for d in &index.manifests {
            self.mark(d, &mut keep)?;
        }
        let mut removed = 0;
        let mut chains = Vec::new();
        for d in index.manifests.iter().filter(|d| d.media_type == MEDIA_MANIFEST) {
            if let Ok(config) = self.manifest(&d.digest).and_then(|m| self.config(&m.config.digest)) {
                chains.extend(crate::layer::cache::chain_id(&config.rootfs.diff_ids));
            }
        }
        crate::layer::cache::prune(&self.root, &chains);
        let dir = self.blob_dir();
        for entry in fs::read_dir(&dir).wrap_err_with(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                fs::remove_file(entry.path()).wrap_err_with(|| format!("removing {}", entry.path().display()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn mark(&self, d: &Descriptor, keep: &mut HashSet<String>) -> Result<()> {
        keep.insert(d.digest.hex().to_string());
        if d.media_type == MEDIA_INDEX {
            let nested: Index = serde_json::from_slice(&oci::read_blob(&self.root, &d.digest)?)?;
            for m in &nested.manifests {
                self.mark(m, keep)?;
            }
        } else if d.media_type == MEDIA_MANIFEST {
            let m = self.manifest(&d.digest)?;
            keep.insert(m.config.digest.hex().to_string());
            for l in &m.layers {
                keep.insert(l.digest.hex().to_string());
            }
        }
        Ok(())
    }

    /// Resolves `key` to its manifest descriptor, or explains what exists.
    pub fn resolve(&self, key: &str) -> Result<Descriptor> {
        let index = self.index()?;
        self.find(&index, key).ok_or_else(|| {
            let tags = self.tags_of(&index, key.split(':').next().unwrap_or(key));
            let err = eyre!("no stash {key} in {}", self.root.display());
            if tags.is_empty() {
                err.suggestion("see kiwi-stackbuild stash --list")
            } else {
                err.suggestion(format!("known tags: {}", tags.join(", ")))
            }
        })
    }
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

/// Fails when `path` is not a store root we may use.
pub fn check_home(path: &Path) -> Result<()> {
    if path.exists() && !path.is_dir() {
        return Err(eyre!("the stash store {} is not a directory", path.display()))
            .suggestion("name a directory (or a new path) with --stash-home or KIWI_STACKBUILD_HOME");
    }
    Ok(())
}
