//! The local stash store: one OCI image layout for all stashes, refs named
//! `name:tag` in `index.json`.
//!
//! A writer does its slow part (reading, compressing, copying) under the
//! shared lock, into temp files of its own in the store, and takes the
//! exclusive lock only to move its blobs in and replace `index.json` by
//! rename, so a crash or kill at any moment leaves every tag that existed
//! before readable. Garbage collection needs the exclusive lock, so nothing a
//! writer reads under the shared one disappears; between the two locks it
//! can, and the writer checks again under the exclusive one.
//!
//! Every `.tmp-*` file and directory in the store is flocked by the run that
//! owns it for as long as it lives, and is made while that run holds a store
//! lock; the cleanup of what killed runs left (under the exclusive lock)
//! removes only those it can lock itself.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use color_eyre::eyre::{eyre, Result, WrapErr};
use color_eyre::Section;
use serde::Serialize;
use serde_json::Value;
use tempfile::NamedTempFile;

use crate::fsutil::Scratch;
use crate::layer::compress::Settings;
use crate::oci::layout::{readable, Layout};
use crate::oci::{self, Descriptor, DescriptorExt, Digest, ImageConfig, ImageIndex, ImageManifest, MediaType};

mod check;
#[cfg(test)]
mod damage_tests;
pub mod fetched;
pub mod walk;

pub use check::{Checked, Finding, Fix};
use walk::{Kind, Role};

/// Where the store lives when neither `--stash-home` nor
/// `KIWI_STACKBUILD_HOME` says otherwise.
pub const DEFAULT_HOME: &str = "/var/lib/kiwi-stackbuild/stash";

/// The local store of stashes, on an image layout.
#[derive(Debug, Clone)]
pub struct Store {
    layout: Layout,
    compression: Settings,
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
    /// Digest of the manifest, as the index spells it (any algorithm).
    pub digest: String,
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
    /// What it is: `oci image`, `docker image`, `oci index`, `docker
    /// manifest list`, or the media type of anything else.
    pub kind: Kind,
    /// What is wrong with it, when it cannot be used (a blob missing,
    /// corrupt or of the wrong size); `None` when it is whole.
    pub broken: Option<String>,
    /// Where a fetched image came from (see [`fetched`]); absent for a
    /// stash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched_from: Option<String>,
    /// When a fetched image was fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<String>,
    /// When a run last used a fetched image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
}

/// The store was read and found damaged: what is wrong has been printed,
/// and the command exits with [`Damaged::EXIT_CODE`], so that scripts can
/// tell it from a command that failed.
#[derive(Debug)]
pub struct Damaged(pub String);

impl Damaged {
    /// The exit status of a command that found damage (1 is a failure, 2 a
    /// usage error).
    pub const EXIT_CODE: u8 = 3;
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

/// What garbage collection will delete: worked out in full before anything is.
#[derive(Debug, Default)]
struct Garbage {
    /// Blob files (hex names) that no ref needs.
    blobs: Vec<String>,
    /// Chain IDs of the cached trees to keep.
    chains: Vec<Digest>,
}

impl Store {
    /// The store at `root` (nothing is created yet).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store {
            layout: Layout::new(root),
            compression: Settings::default(),
        }
    }

    /// The store, writing new layers as `settings` say (gzip level 1 on
    /// every core when not told).
    pub fn with_compression(mut self, settings: Settings) -> Store {
        self.compression = settings;
        self
    }

    /// How new layers are compressed.
    pub fn compression(&self) -> &Settings {
        &self.compression
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// `blobs/sha256` of the store.
    pub fn blob_dir(&self) -> PathBuf {
        self.layout.blob_dir()
    }

    /// The path of the blob `digest` (which may not be there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.layout.blob_path(digest)
    }

    /// Whether the store has been created.
    pub fn exists(&self) -> bool {
        self.layout.has_index()
    }

    /// Writes the layout's files where they are missing; needs the lock.
    fn create(&self, _lock: &Lock) -> Result<()> {
        self.layout
            .init()
            .wrap_err_with(|| format!("creating the stash store {}", self.root().display()))
    }

    /// Creates the store if needed and takes its exclusive lock. What runs
    /// killed left behind (temp files of layers, blobs and pulls) is removed
    /// then; temp files of live runs are locked and stay.
    pub fn lock_exclusive(&self) -> Result<Lock> {
        let lock = self.lock_exclusive_as_is()?;
        self.remove_leftovers(&lock)?;
        self.create(&lock)?;
        Ok(lock)
    }

    /// The exclusive lock, with nothing removed or created yet (what
    /// `stash --check --repair` needs, to report what it removes). Fails
    /// when the store has blobs but no index.
    pub fn lock_exclusive_as_is(&self) -> Result<Lock> {
        fs::create_dir_all(self.blob_dir())
            .wrap_err_with(|| format!("creating the stash store {}", self.root().display()))
            .suggestion("choose a writable place with --stash-home or KIWI_STACKBUILD_HOME")?;
        let dir = self.lock_handle()?;
        dir.lock()
            .wrap_err_with(|| format!("locking {}", self.root().display()))?;
        self.require_index()?;
        Ok(Lock { _file: dir })
    }

    /// Fails when `index.json` is missing but `blobs/sha256` holds blobs: that
    /// is a damaged store, not an empty one, and starting a new index would
    /// let the next garbage collection delete every blob. An empty or
    /// absent store directory is fine.
    pub fn require_index(&self) -> Result<()> {
        if self.exists() {
            return Ok(());
        }
        let blobs = fs::read_dir(self.blob_dir()).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        });
        if blobs == 0 {
            return Ok(());
        }
        let root = self.root().display();
        Err(eyre!("the stash store {root} has {blobs} blobs but no index.json")).suggestion(format!(
            "restore {root}/index.json from a backup, or remove the directory {root} to start an empty store"
        ))
    }

    /// Takes the shared lock of an existing store, so no change runs while
    /// we read; `None` when there is no store yet. Needs only read access, so
    /// it works on a read-only store and for any user who can read it.
    pub fn lock_shared(&self) -> Result<Option<Lock>> {
        if !self.exists() {
            self.require_index()?;
            return Ok(None);
        }
        let dir = self.lock_handle()?;
        dir.lock_shared()
            .wrap_err_with(|| format!("locking {}", self.root().display()))?;
        Ok(Some(Lock { _file: dir }))
    }

    /// Takes the shared lock for the slow part of a change (reading the
    /// base, writing a layer, copying an image), creating the store first if
    /// needed. Other writers and readers go on meanwhile; garbage collection
    /// waits.
    pub fn lock_for_staging(&self) -> Result<Lock> {
        if !self.exists() {
            drop(self.lock_exclusive()?);
        }
        self.lock_shared()?
            .ok_or_else(|| eyre!("the stash store {} vanished", self.root().display()))
    }

    /// The store directory itself, which is what is locked: unlike a lock
    /// file it cannot be removed while the store is in use, and opening it
    /// needs no write access.
    fn lock_handle(&self) -> Result<File> {
        File::open(self.root())
            .wrap_err_with(|| format!("opening the stash store {}", self.root().display()))
            .suggestion("the store must be readable: run as root or choose another --stash-home")
    }

    /// Removes the `.tmp-*` files and directories killed runs left in the
    /// store and its blob directory: those no live run holds locked.
    pub fn remove_leftovers(&self, _lock: &Lock) -> Result<()> {
        for dir in [self.root().to_path_buf(), self.blob_dir()] {
            for entry in fs::read_dir(&dir).wrap_err_with(|| format!("reading {}", dir.display()))? {
                let entry = entry?;
                if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                let path = entry.path();
                let claimed = crate::fsutil::claim_if_abandoned(&path);
                let Some(_claimed) = claimed.wrap_err_with(|| format!("locking {}", path.display()))? else {
                    continue;
                };
                let gone = if entry.file_type()?.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                match gone {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(e)
                            .wrap_err_with(|| format!("removing {}, left by an interrupted run", path.display()));
                    }
                    _ => log::debug!("removed {}, left by an interrupted run", path.display()),
                }
            }
        }
        Ok(())
    }

    /// A new, empty temp file in the blob directory, owned by this run until
    /// it is dropped or stored. Take a store lock first.
    pub fn temp_blob(&self, kind: &str) -> Result<TempBlob> {
        let made = crate::interrupt::create(
            || {
                tempfile::Builder::new()
                    .prefix(&format!(".tmp-{kind}-"))
                    .permissions(readable())
                    .tempfile_in(self.blob_dir())
            },
            |t| t.path().to_path_buf(),
        )
        .wrap_err_with(|| format!("creating a {kind} in {}", self.blob_dir().display()))
        .suggestion("choose a writable place with --stash-home or KIWI_STACKBUILD_HOME")?;
        TempBlob::owned(made)
    }

    /// The file `src` (a blob of another layout) as a temp file in the blob
    /// directory: a hard link where the file system allows, else a copy.
    /// Take a store lock first.
    pub fn temp_blob_from(&self, src: &Path) -> Result<TempBlob> {
        let linked = crate::interrupt::create(
            || {
                tempfile::Builder::new()
                    .prefix(".tmp-import-")
                    .make_in(self.blob_dir(), |path| {
                        fs::hard_link(src, path).and_then(|()| File::open(path))
                    })
            },
            |t| t.path().to_path_buf(),
        );
        let temp = match linked {
            Ok(made) => TempBlob::owned(made)?,
            Err(_) => {
                let temp = self.temp_blob("import")?;
                let mut from = File::open(src).wrap_err_with(|| format!("opening {}", src.display()))?;
                io::copy(&mut from, &mut temp.file()).wrap_err_with(|| format!("copying {}", src.display()))?;
                temp.file().sync_all()?;
                temp
            }
        };
        Ok(temp)
    }

    /// A new temp directory in the store, owned by this run until dropped:
    /// [`remove_leftovers`](Store::remove_leftovers) spares it while it lives.
    /// Take a store lock first.
    pub fn temp_dir(&self, kind: &str) -> Result<Scratch> {
        crate::fsutil::private_tempdir(Some(self.root()), &format!(".tmp-{kind}-"))
            .wrap_err_with(|| format!("creating a {kind} area in the store"))
    }

    /// Pins the image `d` names as `key`: a temp layout in the store (see
    /// [`Store::temp_dir`]) with a hard link to every blob it needs and an
    /// index of that one ref, so that it can be read without a lock while
    /// stashes and removals go on: a removal unlinks only the store's names
    /// of the blobs, not the pinned ones. Take the shared lock to pin; the
    /// pin lives until dropped. `None` when the store cannot be written (a
    /// read-only one): then keep the lock while reading.
    pub fn pin(&self, key: &str, d: &Descriptor, _lock: &Lock) -> Result<Option<Scratch>> {
        let pin = match self.temp_dir("pin") {
            Ok(pin) => pin,
            Err(e)
                if e.chain()
                    .any(|c| c.downcast_ref::<io::Error>().is_some_and(cannot_write)) =>
            {
                log::debug!("reading {key} under the store lock: {e:#}");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let layout = Layout::new(pin.path());
        layout.init()?;
        let blobs = layout.blob_dir();
        let reach = walk::reach(self.root(), d);
        for need in &reach.needs {
            let name = need.digest.hex();
            let link = blobs.join(name);
            if link.symlink_metadata().is_ok() {
                continue;
            }
            fs::hard_link(self.blob_dir().join(name), &link)
                .wrap_err_with(|| format!("pinning blob {} of {key}", need.digest))
                .suggestion("see kiwi-stackbuild stash --check")?;
        }
        let mut index = oci::empty_index();
        Store::set_ref(&mut index, key, d.clone());
        layout.write_index(&index)?;
        Ok(Some(pin))
    }

    /// The store's index (empty when there is no store).
    pub fn index(&self) -> Result<ImageIndex> {
        Ok(self.index_and_unreadable()?.0)
    }

    /// The index, and its entries that are no descriptor we can read (see
    /// [`Unreadable`]): one bad entry another tool wrote does not make the
    /// whole store unreadable.
    pub fn index_and_unreadable(&self) -> Result<(ImageIndex, Vec<Unreadable>)> {
        if !self.exists() {
            self.require_index()?;
            return Ok((oci::empty_index(), Vec::new()));
        }
        let path = self.root().join("index.json");
        let mut value: Value = oci::read_json(&path)?;
        let entries = match value.get_mut("manifests").map(Value::take) {
            Some(Value::Array(entries)) => entries,
            _ => Vec::new(),
        };
        let (mut good, mut unreadable) = (Vec::new(), Vec::new());
        for (n, raw) in entries.into_iter().enumerate() {
            match serde_json::from_value::<Descriptor>(raw.clone()) {
                Ok(_) => good.push(raw),
                Err(e) => {
                    let named = raw.pointer("/annotations/org.opencontainers.image.ref.name");
                    let named = named.and_then(Value::as_str);
                    let name = named.map_or_else(|| format!("entry {} of index.json", n + 1), str::to_string);
                    unreadable.push(Unreadable {
                        name,
                        named: named.is_some(),
                        raw,
                        error: e.to_string(),
                    });
                }
            }
        }
        value["manifests"] = Value::Array(good);
        let index = serde_json::from_value(value).wrap_err_with(|| format!("parsing {}", path.display()))?;
        Ok((index, unreadable))
    }

    /// Replaces the index by rename, keeping the entries it could not read.
    /// Needs the exclusive lock.
    pub fn write_index(&self, index: &ImageIndex, lock: &Lock) -> Result<()> {
        self.write_index_dropping(index, &[], lock)
    }

    /// Like [`Store::write_index`], but unreadable entries named in
    /// `dropped` go.
    fn write_index_dropping(&self, index: &ImageIndex, dropped: &[String], _lock: &Lock) -> Result<()> {
        let kept: Vec<Value> = match self.exists() {
            true => self.index_and_unreadable()?.1,
            false => Vec::new(),
        }
        .into_iter()
        .filter(|u| !dropped.contains(&u.name))
        .map(|u| u.raw)
        .collect();
        if kept.is_empty() {
            return self.layout.write_index(index).wrap_err("updating the store index");
        }
        let mut value = serde_json::to_value(index)?;
        match value.get_mut("manifests").and_then(Value::as_array_mut) {
            Some(entries) => entries.extend(kept),
            None => value["manifests"] = Value::Array(kept),
        }
        oci::layout::write_index_bytes(&self.root().join("index.json"), &oci::canonical_json(&value)?)
            .wrap_err("updating the store index")
    }

    /// The manifest descriptor tagged `key` (`name:tag`).
    pub fn find(&self, index: &ImageIndex, key: &str) -> Option<Descriptor> {
        index.manifests().iter().find(|d| d.ref_name() == Some(key)).cloned()
    }

    /// The newest ref of `name` (the one written last), any tag.
    pub fn latest_of(&self, index: &ImageIndex, name: &str) -> Option<Descriptor> {
        let prefix = format!("{name}:");
        index
            .manifests()
            .iter()
            .rev()
            .find(|d| d.ref_name().is_some_and(|r| r.starts_with(&prefix)))
            .cloned()
    }

    /// Every `name:tag` of `name` in `index`, in index order.
    pub fn tags_of(&self, index: &ImageIndex, name: &str) -> Vec<String> {
        index
            .manifests()
            .iter()
            .filter_map(DescriptorExt::ref_name)
            .filter(|r| r.split(':').next() == Some(name))
            .map(str::to_string)
            .collect()
    }

    /// Reads and verifies a manifest.
    pub fn manifest(&self, digest: &Digest) -> Result<ImageManifest> {
        self.layout.read_json_blob(digest, "manifest")
    }

    /// Reads and verifies an image config.
    pub fn config(&self, digest: &Digest) -> Result<ImageConfig> {
        self.layout.read_json_blob(digest, "image config")
    }

    /// Stores a JSON blob (canonical JSON) and returns its descriptor.
    /// Needs the exclusive lock.
    pub fn put_json<T: Serialize>(&self, value: &T, media_type: MediaType) -> Result<Descriptor> {
        self.layout.put_json(value, media_type)
    }

    /// Points each of `also` at the image `key` names.
    pub fn tag_as(&self, key: &str, also: &[String]) -> Result<()> {
        if also.is_empty() {
            return Ok(());
        }
        let lock = self.lock_exclusive()?;
        let mut index = self.index()?;
        let desc = self.resolve(key)?;
        for other in also {
            Store::set_ref(&mut index, other, desc.clone());
        }
        self.write_index(&index, &lock)
    }

    /// Points `key` at `manifest` in `index` (replacing an old target).
    pub fn set_ref(index: &mut ImageIndex, key: &str, mut manifest: Descriptor) {
        Store::remove_ref(index, key);
        manifest.annotate(oci::REF_NAME, key);
        // The crate's index has no mutable getter for its manifests.
        let mut manifests = index.manifests().clone();
        manifests.push(manifest);
        index.set_manifests(manifests);
    }

    /// Every named entry of the store, in index order. Entries that cannot
    /// be used are listed too, with what is wrong in [`Entry::broken`];
    /// layers are only looked up (with their size), not read.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let (index, unreadable) = self.index_and_unreadable()?;
        let mut entries: Vec<Entry> = index
            .manifests()
            .iter()
            .map(|d| {
                // An entry without a name is shown by its digest.
                let digest = d.digest().to_string();
                self.entry(d, d.ref_name().unwrap_or(&digest))
            })
            .collect();
        entries.extend(unreadable.into_iter().map(|u| Entry {
            reference: u.name,
            digest: u.raw.get("digest").and_then(Value::as_str).unwrap_or("-").to_string(),
            created: None,
            layers: 0,
            size: 0,
            base: None,
            labels: BTreeMap::new(),
            kind: Kind::of(&MediaType::from(
                u.raw.get("mediaType").and_then(Value::as_str).unwrap_or("none"),
            )),
            broken: Some(format!("its index entry cannot be read: {}", u.error)),
            fetched_from: None,
            fetched_at: None,
            last_used: None,
        }));
        Ok(entries)
    }

    /// The listing of the index entry `d`, named `reference`.
    fn entry(&self, d: &Descriptor, reference: &str) -> Entry {
        let kind = Kind::of(d.media_type());
        let reach = walk::reach(self.root(), d);
        let mut problems: Vec<String> = reach.problems.iter().map(ToString::to_string).collect();
        let mut entry = Entry {
            reference: reference.to_string(),
            digest: d.digest().to_string(),
            created: None,
            layers: 0,
            size: 0,
            base: None,
            labels: BTreeMap::new(),
            kind: kind.clone(),
            broken: None,
            fetched_from: fetched::annotation(d, fetched::FETCHED_FROM).map(str::to_string),
            fetched_at: fetched::annotation(d, fetched::FETCHED_AT).map(str::to_string),
            last_used: fetched::annotation(d, fetched::LAST_USED).map(str::to_string),
        };
        let fault_of = |role: Role| reach.problems.iter().any(|p| p.role == role);
        if kind.is_image() && !fault_of(Role::Manifest) {
            match d.sha256().and_then(|digest| self.manifest(&digest)) {
                Ok(manifest) => {
                    entry.layers = manifest.layers().len();
                    entry.size = manifest.layers().iter().map(Descriptor::size).sum();
                    // A config the walk found wrong is not read again.
                    if !fault_of(Role::Config) {
                        match manifest.config().sha256().and_then(|digest| self.config(&digest)) {
                            Ok(config) => {
                                entry.created = config.created.clone();
                                entry.labels = config.labels();
                                entry.base = entry.labels.get(crate::labels::BASES).cloned();
                            }
                            Err(e) => problems.push(format!("{e:#}")),
                        }
                    }
                }
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        entry.broken = (!problems.is_empty()).then(|| problems.join("; "));
        entry
    }

    /// Removes every ref of `keys` and the blobs no remaining ref uses, all
    /// or nothing: the new index and every blob to delete are worked out
    /// first, and when that fails nothing is changed. Then the index is
    /// replaced, and only then are blobs deleted, so a kill in between
    /// leaves unused blobs that `stash --check --repair` frees. Returns how
    /// many blobs went.
    pub fn remove(&self, keys: &[String]) -> Result<usize> {
        if !self.exists() {
            self.require_index()?;
            let key = keys.first().map_or("", String::as_str);
            return Err(eyre!("no stash {key} in {}", self.root().display())).suggestion("the store is empty");
        }
        let lock = self.lock_exclusive()?;
        self.remove_keys(&lock, self.index_and_unreadable()?, keys)
    }

    /// Removes every tag of `name`, as [`Store::remove`] does; which tags
    /// those are is read under the lock, so none added meanwhile stays.
    /// Returns the tags and how many blobs went.
    pub fn remove_all_of(&self, name: &str) -> Result<(Vec<String>, usize)> {
        let missing = || {
            Err(eyre!("no stash named {name} in {}", self.root().display()))
                .suggestion("see kiwi-stackbuild stash --list")
        };
        if !self.exists() {
            self.require_index()?;
            return missing();
        }
        let lock = self.lock_exclusive()?;
        let read = self.index_and_unreadable()?;
        let keys = self.tags_of(&read.0, name);
        if keys.is_empty() {
            return missing();
        }
        let freed = self.remove_keys(&lock, read, &keys)?;
        Ok((keys, freed))
    }

    /// Removes `keys` from the index as read under `lock` (with the entries
    /// it could not read), and frees what no ref needs then.
    fn remove_keys(
        &self,
        lock: &Lock,
        (mut index, unreadable): (ImageIndex, Vec<Unreadable>),
        keys: &[String],
    ) -> Result<usize> {
        let (dropped, unreadable): (Vec<Unreadable>, Vec<Unreadable>) =
            unreadable.into_iter().partition(|u| keys.contains(&u.name));
        let dropped: Vec<String> = dropped.into_iter().map(|u| u.name).collect();
        for key in keys.iter().filter(|k| !dropped.contains(k)) {
            if self.find(&index, key).is_none() {
                let known: Vec<&str> = index.manifests().iter().filter_map(DescriptorExt::ref_name).collect();
                let near = crate::suggest::closest(key, known.iter().copied());
                return Err(eyre!("no stash {key} in {}", self.root().display())).suggestion(if known.is_empty() {
                    "the store is empty".to_string()
                } else if let Some(near) = near {
                    format!("did you mean {near}?")
                } else {
                    format!("stashes: {}", known.join(", "))
                });
            }
            Store::remove_ref(&mut index, key);
        }
        let garbage = self
            .garbage(&index, &unreadable)
            .wrap_err_with(|| format!("removing {}: nothing was changed", keys.join(", ")))?;
        crate::fault::point("rm-before-index");
        self.write_index_dropping(&index, &dropped, lock)?;
        crate::fault::point("rm-after-index");
        self.delete(&garbage)
            .wrap_err_with(|| format!("{} removed, but not every unused blob was freed", keys.join(", ")))
            .suggestion("run kiwi-stackbuild stash --check --repair to free the rest")
    }

    fn remove_ref(index: &mut ImageIndex, key: &str) {
        let mut manifests = index.manifests().clone();
        manifests.retain(|d| d.ref_name() != Some(key));
        index.set_manifests(manifests);
    }

    /// Deletes blobs that no entry of `index` reaches and cached trees of
    /// images that are gone. Returns how many blobs went. Deletes nothing
    /// when an entry's manifest or index is there but cannot be read, since
    /// what it needs cannot be told.
    pub fn collect_garbage(&self, index: &ImageIndex, _lock: &Lock) -> Result<usize> {
        let garbage = self.garbage(index, &self.index_and_unreadable()?.1)?;
        self.delete(&garbage)
    }

    /// What [`Store::collect_garbage`] would delete, worked out without
    /// changing anything. Every entry of `index` is walked whatever its
    /// media type ([`walk::reach`]). A ref whose manifest blob is missing
    /// reaches nothing that can be found, so it keeps nothing; a ref whose
    /// manifest is present but unreadable or corrupt may need any blob, so
    /// it fails the whole plan, naming the ref and what to do.
    fn garbage(&self, index: &ImageIndex, unreadable: &[Unreadable]) -> Result<Garbage> {
        if let Some(u) = unreadable.first() {
            let name = &u.name;
            return Err(eyre!(
                "cannot tell which blobs {name} needs: its index entry cannot be read ({})",
                u.error
            ))
            .suggestion(u.advice());
        }
        let mut keep = HashSet::new();
        let mut chains = Vec::new();
        for d in index.manifests() {
            let reach = walk::reach(self.root(), d);
            if let Some(problem) = reach.blocker() {
                let name = ref_name(d);
                return Err(eyre!("cannot tell which blobs {name} needs: its {problem}")).suggestion(format!(
                    "re-pull or re-stash {name} to restore that blob, or remove {name} first \
                     (kiwi-stackbuild stash --rm {name})"
                ));
            }
            keep.extend(reach.needs.into_iter().map(|n| n.digest.hex().to_string()));
            chains.extend(reach.chains);
        }
        let mut blobs = Vec::new();
        let dir = self.blob_dir();
        for entry in fs::read_dir(&dir).wrap_err_with(|| format!("reading {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            // Temp files are remove_leftovers' to judge; other names are no blobs.
            if is_blob_name(&name) && !keep.contains(&name) {
                blobs.push(name);
            }
        }
        Ok(Garbage { blobs, chains })
    }

    /// Deletes what [`Store::garbage`] found. Returns how many blobs went.
    fn delete(&self, garbage: &Garbage) -> Result<usize> {
        crate::layer::cache::prune(self.root(), &garbage.chains);
        let mut removed = 0;
        for name in &garbage.blobs {
            let path = self.blob_dir().join(name);
            match fs::remove_file(&path) {
                Ok(()) => {
                    removed += 1;
                    crate::fault::point("gc-between-removals");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).wrap_err_with(|| format!("removing {}", path.display())),
            }
        }
        Ok(removed)
    }

    /// Resolves `key` to its manifest descriptor, or explains what exists.
    pub fn resolve(&self, key: &str) -> Result<Descriptor> {
        let index = self.index()?;
        self.find(&index, key).ok_or_else(|| {
            let tags = self.tags_of(&index, key.split(':').next().unwrap_or(key));
            let err = eyre!("no stash {key} in {}", self.root().display());
            if !tags.is_empty() {
                return err.suggestion(format!("known tags: {}", tags.join(", ")));
            }
            let refs = index.manifests().iter().filter_map(DescriptorExt::ref_name);
            if let Some(near) = crate::suggest::closest(key, refs) {
                return err.suggestion(format!("did you mean {near}?"));
            }
            match crate::reference::transport_hint(key.strip_suffix(":latest").unwrap_or(key)) {
                Some(hint) => err.suggestion(format!("did you mean {hint}?")),
                None => err.suggestion("see kiwi-stackbuild stash --list"),
            }
        })
    }
}

/// A temp file in the store's blob directory, flocked by this run for as
/// long as it lives so that another writer's cleanup leaves it alone;
/// removed when dropped, unless stored.
#[derive(Debug)]
pub struct TempBlob {
    // Removed before it is unregistered: fields drop in order.
    file: NamedTempFile,
    _registered: crate::interrupt::Registered,
}

impl TempBlob {
    /// `file`, made and registered with the interrupt in one step, locked.
    /// (Killed before the lock, the file is unlocked, and the next writer's
    /// cleanup takes it.)
    fn owned((file, _registered): (NamedTempFile, crate::interrupt::Registered)) -> Result<TempBlob> {
        file.as_file()
            .lock()
            .wrap_err_with(|| format!("locking {}", file.path().display()))?;
        Ok(TempBlob { file, _registered })
    }

    /// The open file, to write the blob into.
    pub fn file(&self) -> &File {
        self.file.as_file()
    }

    /// Moves the file in as the blob `digest`, unless the store has that
    /// blob already. Needs the exclusive lock.
    pub fn store_as(self, store: &Store, digest: &Digest, _lock: &Lock) -> Result<()> {
        let dest = store.blob_path(digest);
        if !dest.exists() {
            self.file
                .persist(&dest)
                .map_err(|e| e.error)
                .wrap_err_with(|| format!("storing blob {digest}"))?;
        }
        Ok(())
    }
}

/// The name of an entry of an index: its ref name, else its digest.
fn ref_name(d: &Descriptor) -> String {
    d.ref_name().map_or_else(|| d.digest().to_string(), str::to_string)
}

/// Whether `name` is what a sha256 blob file is called (64 lowercase hex digits).
fn is_blob_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An entry of `index.json` that is no descriptor we can read (written by
/// another tool, or damaged): kept as it is when the index is replaced,
/// listed as broken, and a stop to garbage collection, since what it needs
/// cannot be told.
#[derive(Debug, Clone)]
pub struct Unreadable {
    /// Its ref name, else its place in the index.
    pub name: String,
    /// Whether `name` is a ref name (so `stash --rm` can remove it).
    pub named: bool,
    /// The entry as written.
    pub raw: Value,
    /// Why it cannot be read.
    pub error: String,
}

impl Unreadable {
    /// What the user can do about it.
    pub fn advice(&self) -> String {
        if self.named {
            format!(
                "mend that entry of index.json, or remove it with kiwi-stackbuild stash --rm {}",
                self.name
            )
        } else {
            "mend or delete that entry of index.json by hand".to_string()
        }
    }
}

/// Whether `e` says this process may not write there.
pub fn cannot_write(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied
    )
}

/// Fails when `path` is not a store root we may use.
pub fn check_home(path: &Path) -> Result<()> {
    let suggestion = "name a directory (or a new path) with --stash-home or KIWI_STACKBUILD_HOME";
    let what = match (fs::symlink_metadata(path), fs::metadata(path)) {
        (_, Ok(m)) if m.is_dir() => return Ok(()),
        (_, Ok(_)) => "is not a directory",
        (Ok(_), Err(_)) => "is a symlink to nothing",
        (Err(e), _) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        (Err(e), _) if e.kind() == io::ErrorKind::NotADirectory => "lies below a file",
        (Err(e), _) => return Err(e).wrap_err_with(|| format!("reading the stash store {}", path.display())),
    };
    Err(eyre!("the stash store {} {what}", path.display())).suggestion(suggestion)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::REF_NAME;

    #[test]
    fn a_descriptor_keeps_every_field_through_the_index() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("store"));
        let lock = store.lock_exclusive().unwrap();
        let pulled: Descriptor = serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": Digest::of(b"m").to_string(),
            "size": 1,
            "urls": ["https://example.org/m"],
            "artifactType": "application/vnd.example.sbom",
            "data": "bQ==",
            "platform": {"architecture": "arm64", "os": "linux", "variant": "v8", "os.features": ["f"]},
            "annotations": {"org.example.a": "1", REF_NAME: "from:skopeo"}
        }))
        .unwrap();
        let mut index = store.index().unwrap();
        let mut desc = pulled.clone();
        desc.unannotate(REF_NAME);
        Store::set_ref(&mut index, "a:1", desc);
        store.write_index(&index, &lock).unwrap();
        let mut want = pulled;
        want.annotate(REF_NAME, "a:1");
        assert_eq!(store.find(&store.index().unwrap(), "a:1"), Some(want));
    }
}
