//! Pull and push: images travel between registries (or any skopeo
//! transport) and the local store, fetching only blobs the store lacks.

use std::fs;
use std::io::{self, BufReader, BufWriter};
use std::path::Path;
use std::time::SystemTime;

use color_eyre::eyre::{eyre, Result, WrapErr};
use color_eyre::Section;

use crate::fsutil::Scratch;
use crate::layer::compress::{self, Settings};
use crate::oci::layout::Layout;
use crate::oci::{
    self, Descriptor, DescriptorExt, Digest, ImageConfig, ImageIndex, ImageManifest, MediaType, REF_NAME,
};
use crate::reference::{DockerRef, ImageReference, StashName, Tag};
use crate::registry::RegistryAuth;
use crate::store::{fetched, Lock, Store};
use crate::tools::skopeo::{self, Compression};

/// Makes `dir` an image layout that already holds every blob of `store`
/// (hard links, or symlinks across file systems), so that skopeo copying
/// into it fetches only what the store lacks.
///
/// Returns whether any blob is a symlink: a removal in the store may then
/// take it away, so the store's shared lock must be held while it is read.
pub fn staging_layout(store: &Store, dir: &Path) -> Result<bool> {
    let layout = Layout::new(dir);
    layout.init()?;
    let blobs = layout.blob_dir();
    let Ok(entries) = fs::read_dir(store.blob_dir()) else {
        return Ok(false);
    };
    let mut symlinked = false;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let link = blobs.join(&name);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if fs::hard_link(entry.path(), &link).is_err() {
            std::os::unix::fs::symlink(entry.path(), &link).wrap_err_with(|| format!("linking {}", link.display()))?;
            symlinked = true;
        }
    }
    Ok(symlinked)
}

/// The blobs a manifest (or index) in `layout` reaches, itself included.
fn reachable(layout: &Path, d: &Descriptor, out: &mut Vec<Digest>) -> Result<()> {
    let digest = d.sha256()?;
    let bytes = oci::read_blob(layout, &digest)?;
    out.push(digest);
    if *d.media_type() == MediaType::ImageIndex {
        let index: ImageIndex = serde_json::from_slice(&bytes)?;
        for m in index.manifests() {
            reachable(layout, m, out)?;
        }
    } else {
        let m: ImageManifest =
            serde_json::from_slice(&bytes).wrap_err_with(|| format!("parsing manifest {}", d.digest()))?;
        out.push(m.config().sha256()?);
        for l in m.layers() {
            out.push(l.sha256()?);
        }
    }
    Ok(())
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The manifest now tagged in the store.
    pub digest: Digest,
    /// Blobs that were not in the store before.
    pub new_blobs: usize,
    /// Their size in bytes.
    pub new_bytes: u64,
}

/// The store's manifest with this digest, if it holds one.
fn known_manifest(store: &Store, digest: &Digest) -> Option<Descriptor> {
    let bytes = oci::read_blob(store.root(), digest).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let media_type = MediaType::from(value.get("mediaType")?.as_str()?);
    matches!(media_type, MediaType::ImageManifest | MediaType::ImageIndex)
        .then(|| Descriptor::new(media_type, bytes.len() as u64, digest))
}

/// The store's copy of the image that `source` serves as the manifest
/// `digest`, when the store holds it whole: fetched from there, or the
/// same manifest stored otherwise.
fn held(store: &Store, index: &ImageIndex, source: &str, digest: &Digest) -> Option<Descriptor> {
    fetched::find_by_source(index, source, digest)
        .or_else(|| known_manifest(store, digest))
        .filter(|d| complete(store, d))
}

/// The digest of the manifest `src` serves for this machine, asked with one
/// manifest request (an OBS reference is read from its staged archive).
pub fn remote_digest(src: &ImageReference, auth: &RegistryAuth) -> Result<Digest> {
    let resolved = crate::obs::resolve(src)?;
    platform_digest(src, &skopeo::inspect_raw(&resolved, auth)?)
}

/// The image config of `src`, which is no stash, and `src` pinned to the
/// manifest it names now. A manifest request says which image that is; the
/// config is read from the store when it holds that image whole, else
/// asked for too.
pub fn remote_config(
    store: &Store,
    src: &ImageReference,
    auth: &RegistryAuth,
) -> Result<(ImageConfig, ImageReference)> {
    let digest = remote_digest(src, auth)?;
    let pinned = by_digest(src, &digest)?;
    let in_store = match store.lock_shared()? {
        Some(_lock) => match held(store, &store.index()?, &src.to_string(), &digest) {
            Some(d) => {
                let manifest = store.manifest(&d.sha256()?)?;
                Some(store.config(&manifest.config().sha256()?)?)
            }
            None => None,
        },
        None => None,
    };
    if let Some(config) = in_store {
        return Ok((config, pinned));
    }
    let bytes = skopeo::inspect_config(&pinned, auth)?;
    let config = serde_json::from_slice(&bytes).map_err(|e| eyre!("the image config of {src} is not one: {e}"))?;
    Ok((config, pinned))
}

/// Whether the store holds `d` and every blob it reaches.
fn complete(store: &Store, d: &Descriptor) -> bool {
    let mut blobs = Vec::new();
    reachable(store.root(), d, &mut blobs).is_ok() && blobs.iter().all(|b| store.blob_path(b).exists())
}

/// Copies `src` into the store as `key`. Blobs the store has are not fetched
/// again; a registry image whose manifest the store has is only tagged. A
/// failed pull changes nothing in the store. The copy holds no lock
/// (stashes, pulls, removals and rebuilds go on); only moving the new blobs
/// in and replacing the index takes the exclusive one.
pub fn pull(store: &Store, src: &ImageReference, key: &str, auth: &RegistryAuth) -> Result<Pulled> {
    if matches!(src, ImageReference::Docker(_)) {
        let raw = skopeo::inspect_raw(src, auth)?;
        let lock = store.lock_exclusive()?;
        if let Some(d) = known_manifest(store, &Digest::of(&raw)).filter(|d| complete(store, d)) {
            let digest = d.sha256()?;
            log::info!("{src} is in the store already ({}): nothing to fetch", digest.short());
            let mut index = store.index()?;
            Store::set_ref(&mut index, key, d);
            store.write_index(&index, &lock)?;
            return Ok(Pulled {
                digest,
                new_blobs: 0,
                new_bytes: 0,
            });
        }
    }
    // The staging layout is made under the shared lock; the copy holds none,
    // since what it links from the store is its own (hard links) or checked
    // when moved in (symlinks).
    let shared = store.lock_for_staging()?;
    let staging = store.temp_dir("pull")?;
    staging_layout(store, staging.path())?;
    drop(shared);
    let dst = ImageReference::Oci {
        dir: staging.path().to_string_lossy().into_owned(),
        image: Some(key.to_string()),
    };
    let progress = crate::progress::spinner(&format!("pulling {src}"));
    let copied = skopeo::copy(src, &dst, auth, Compression::Keep).wrap_err_with(|| format!("pulling {src}"));
    progress.finish_and_clear();
    copied?;
    crate::fault::point("pull-after-copy");
    let staged = Layout::new(staging.path()).read_index()?;
    let desc = store
        .find(&staged, key)
        .ok_or_else(|| eyre!("skopeo stored no image for {src}"))?;
    let mut blobs = Vec::new();
    reachable(staging.path(), &desc, &mut blobs)?;
    // Config and layers first, the manifest last.
    blobs.reverse();
    let lock = store.lock_exclusive()?;
    let mut index = store.index()?;
    let (new_blobs, new_bytes) = move_in(store, staging.path(), blobs, src, &lock)?;
    let digest = desc.sha256()?;
    let mut desc = desc;
    desc.unannotate(REF_NAME);
    Store::set_ref(&mut index, key, desc);
    crate::fault::point("pull-before-index");
    store.write_index(&index, &lock)?;
    crate::fault::point("pull-after-index");
    Ok(Pulled {
        digest,
        new_blobs,
        new_bytes,
    })
}

/// Moves the `blobs` of the `staging` layout that the store lacks into it;
/// returns how many and their size. Needs the exclusive lock.
fn move_in(
    store: &Store,
    staging: &Path,
    blobs: Vec<Digest>,
    src: &ImageReference,
    _lock: &Lock,
) -> Result<(usize, u64)> {
    let new: Vec<Digest> = blobs.into_iter().filter(|d| !store.blob_path(d).exists()).collect();
    for digest in &new {
        // A blob the staging layout linked to the store by symlink is gone
        // when a garbage collection ran between the locks.
        let from = oci::blob_path(staging, digest);
        if !from.symlink_metadata().is_ok_and(|m| m.is_file()) {
            return Err(eyre!(
                "the blob {digest} was removed from the store while pulling {src}"
            ))
            .suggestion("run the pull again");
        }
    }
    // What a source gave is checked before the store keeps it: a blob kept
    // under a digest it does not have would stand in for the real one.
    for digest in &new {
        verify_blob(&oci::blob_path(staging, digest), digest, src)?;
    }
    let mut bytes = 0;
    for (n, digest) in new.iter().enumerate() {
        let from = oci::blob_path(staging, digest);
        bytes += fs::metadata(&from)?.len();
        fs::rename(&from, store.blob_path(digest)).wrap_err_with(|| format!("storing blob {digest}"))?;
        if n == 0 {
            crate::fault::point("pull-between-blobs");
        }
    }
    Ok((new.len(), bytes))
}

/// Fails unless the file at `path` hashes to `digest`, over its whole length.
fn verify_blob(path: &Path, digest: &Digest, src: &ImageReference) -> Result<()> {
    let file = fs::File::open(path).wrap_err_with(|| format!("opening blob {digest}"))?;
    let mut reader = oci::HashingReader::new(std::io::BufReader::new(file));
    std::io::copy(&mut reader, &mut std::io::sink()).wrap_err_with(|| format!("reading blob {digest}"))?;
    let got = reader.digest();
    if got != *digest {
        return Err(eyre!(
            "the blob {digest} that {src} gave is corrupt: its content has the digest {got}"
        ));
    }
    Ok(())
}

/// The name of a push's scratch layout starts so.
const PUSH_PREFIX: &str = "kiwi-stackbuild-push-";

/// Copies the image `key` of the layout at `layout` to `dst`. With
/// `recompress`, its layers in another compression are recompressed in
/// this process into a scratch layout first (layers already so are linked,
/// the config stays as it is, since the diff_ids do), which skopeo then
/// copies with every digest kept: skopeo 1.9 would otherwise reuse a layer
/// a registry holds in the other compression. Without it the layers go as
/// stored.
pub fn copy_out(
    layout: &Path,
    key: &str,
    dst: &ImageReference,
    auth: &RegistryAuth,
    recompress: Option<&Settings>,
) -> Result<()> {
    let src = ImageReference::Oci {
        dir: layout.to_string_lossy().into_owned(),
        image: Some(key.to_string()),
    };
    let Some(settings) = recompress else {
        return skopeo::copy(&src, dst, auth, Compression::Keep);
    };
    let index = Layout::new(layout).read_index()?;
    let d = index
        .manifests()
        .iter()
        .find(|d| d.ref_name() == Some(key))
        .cloned()
        .ok_or_else(|| eyre!("no image {key} in {}", layout.display()))?;
    let manifest: ImageManifest = Layout::new(layout).read_json_blob(&d.sha256()?, "manifest")?;
    let all_so = manifest
        .layers()
        .iter()
        .all(|l| oci::LayerCompression::of(l.media_type()).is_ok_and(|c| settings.format.is(c)));
    if all_so {
        return skopeo::copy(&src, dst, auth, kept(dst));
    }
    crate::fsutil::remove_stale(None, PUSH_PREFIX);
    let scratch = crate::fsutil::private_tempdir(None, PUSH_PREFIX).wrap_err("creating a scratch layout")?;
    recompressed_layout(layout, key, &manifest, settings, scratch.path())?;
    crate::fault::point("push-between-copies");
    let from = ImageReference::Oci {
        dir: scratch.path().to_string_lossy().into_owned(),
        image: Some(key.to_string()),
    };
    skopeo::copy(&from, dst, auth, kept(dst))
}

/// How skopeo copies layers that are as they should be: every digest
/// kept, where the destination stores the manifest as it is.
fn kept(dst: &ImageReference) -> Compression {
    match dst {
        ImageReference::Docker(_)
        | ImageReference::Oci { .. }
        | ImageReference::OciArchive { .. }
        | ImageReference::Dir(_) => Compression::Exact,
        _ => Compression::Keep,
    }
}

/// Writes into `scratch` a layout whose image `key` is `manifest` of
/// `layout` with every layer in `settings`' compression.
fn recompressed_layout(
    layout: &Path,
    key: &str,
    manifest: &ImageManifest,
    settings: &Settings,
    scratch: &Path,
) -> Result<()> {
    let out = Layout::new(scratch);
    out.init()?;
    let config_digest = manifest.config().sha256()?;
    let config: oci::ImageConfig = Layout::new(layout).read_json_blob(&config_digest, "config")?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers().len() {
        return Err(eyre!(
            "{key} has {} layers but its config {} diff_ids",
            manifest.layers().len(),
            diff_ids.len()
        ));
    }
    link_blob(layout, &out, &config_digest)?;
    let mut layers = Vec::new();
    for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let compression = oci::LayerCompression::of(l.media_type())?;
        if settings.format.is(compression) {
            link_blob(layout, &out, &l.sha256()?)?;
            layers.push(l.clone());
        } else {
            layers.push(recompress(layout, l, compression, diff_id, &out, settings)?);
        }
    }
    let mut manifest = manifest.clone();
    manifest.set_layers(layers);
    let mut index = oci::empty_index();
    Store::set_ref(&mut index, key, out.put_json(&manifest, MediaType::ImageManifest)?);
    out.write_index(&index)
}

/// Hard-links the blob `digest` of `layout` into `out`, or copies it.
fn link_blob(layout: &Path, out: &Layout, digest: &Digest) -> Result<()> {
    let from = oci::blob_path(layout, digest);
    let to = out.blob_path(digest);
    if fs::hard_link(&from, &to).is_err() {
        fs::copy(&from, &to).wrap_err_with(|| format!("copying blob {digest}"))?;
    }
    Ok(())
}

/// Writes layer `l` of `layout` (in `compression`) into `out` as
/// `settings` say, checking its digest and size, and that it decompresses
/// to `diff_id`, over its whole length; returns the new layer's descriptor.
fn recompress(
    layout: &Path,
    l: &Descriptor,
    compression: oci::LayerCompression,
    diff_id: &Digest,
    out: &Layout,
    settings: &Settings,
) -> Result<Descriptor> {
    let digest = l.sha256()?;
    let file = fs::File::open(oci::blob_path(layout, &digest)).wrap_err_with(|| format!("opening layer {digest}"))?;
    let mut source = BufReader::with_capacity(BUFFER, oci::HashingReader::new(file));
    let mut writer = compress::Writer::new(BufWriter::with_capacity(BUFFER, out.blob_writer()?), settings)?;
    let (plain_id, _) = {
        let mut plain = oci::HashingReader::new(oci::decompress(&mut source, compression)?);
        io::copy(&mut plain, &mut writer).wrap_err_with(|| format!("recompressing layer {digest}"))?;
        plain.finish()
    };
    let trailing = io::copy(&mut source, &mut io::sink()).wrap_err_with(|| format!("reading layer {digest}"))?;
    let (read, size) = source.into_inner().finish();
    if read != digest || size != l.size() {
        return Err(eyre!(
            "layer {digest} is corrupt: it is {read} of {size} bytes, not {} bytes",
            l.size()
        ));
    }
    if trailing != 0 || plain_id != *diff_id {
        return Err(eyre!(
            "layer {digest} is corrupt: it does not decompress to its diff_id {diff_id}"
        ));
    }
    let writer = writer.finish()?.into_inner().map_err(|e| e.into_error())?;
    let (new, new_size) = writer.commit(None)?;
    let mut desc = Descriptor::new(settings.format.media_type(), new_size, new);
    desc.set_annotations(l.annotations().clone());
    Ok(desc)
}

/// Read and write buffers of a recompression.
const BUFFER: usize = 1 << 20;

/// Copies the stash `key` to `dst`; a registry gets only the blobs it lacks.
/// The stash is pinned first ([`Store::pin`]), so the copy holds no lock
/// and stashes and removals go on meanwhile; from a read-only store it is
/// copied under the shared lock.
pub fn push(
    store: &Store,
    key: &str,
    dst: &ImageReference,
    auth: &RegistryAuth,
    recompress: Option<Settings>,
) -> Result<()> {
    let lock = store
        .lock_shared()?
        .ok_or_else(|| eyre!("no stash store at {}", store.root().display()))?;
    let d = store.resolve(key)?;
    let pin = store.pin(key, &d, &lock)?;
    // Pinned, the lock goes; else it is held for the whole copy.
    let (layout, _lock) = match &pin {
        Some(pin) => {
            drop(lock);
            (pin.path(), None)
        }
        None => (store.root(), Some(lock)),
    };
    crate::fault::point("push-before-copy");
    let progress = crate::progress::spinner(&format!("pushing {key} to {dst}"));
    let copied = copy_out(layout, key, dst, auth, recompress.as_ref());
    progress.finish_and_clear();
    copied.wrap_err_with(|| format!("pushing {key}")).map_err(|e| {
        if matches!(dst, ImageReference::ContainersStorage(_)) {
            e.suggestion("containers-storage needs root (or a rootless podman setup)")
        } else {
            e
        }
    })
}

/// A fetched image in the store, held readable for the run that fetched it.
#[derive(Debug)]
pub struct Kept {
    /// Its index entry.
    pub desc: Descriptor,
    /// What keeps its blobs there.
    pub hold: Hold,
}

/// What keeps a fetched image's blobs readable.
#[derive(Debug)]
pub enum Hold {
    /// A pin ([`Store::pin`]): no lock is needed.
    Pin(Scratch),
    /// The store's shared lock (a read-only store, which cannot pin).
    Lock(Lock),
}

impl Kept {
    /// The layout that holds its blobs.
    pub fn layout(&self, store: &Store) -> std::path::PathBuf {
        match &self.hold {
            Hold::Pin(pin) => pin.path().to_path_buf(),
            Hold::Lock(_) => store.root().to_path_buf(),
        }
    }
}

/// The name a fetched image gets in the store: `fetched/` and the
/// reference without its tag (and without `docker://`), in the characters
/// a name may have (`docker://127.0.0.1:5000/ns/debian:12` is
/// `fetched/127-0-0-1-5000/ns/debian:12`, `oci-archive:/tmp/b.tar` is
/// `fetched/oci-archive/tmp/b-tar:latest`), tagged with its tag, digest
/// or archive image (else `latest`).
pub fn fetched_name(src: &ImageReference) -> String {
    let printed = src.to_string();
    let (transport, rest) = printed.split_once(':').unwrap_or(("image", printed.as_str()));
    let rest = rest.trim_start_matches('/');
    let (path, tag) = match src {
        ImageReference::Docker(_) => match rest.split_once('@') {
            Some((name, digest)) => (name, Some(digest.replace(':', "-"))),
            None => match rest.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => (name, Some(tag.to_string())),
                _ => (rest, None),
            },
        },
        ImageReference::ContainersStorage(_) => match rest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains(['/', ']']) => (name, Some(tag.to_string())),
            _ => (rest, None),
        },
        ImageReference::Obs(_) | ImageReference::ObsRepositories(_) => match rest.split_once('#') {
            Some((name, tag)) => (name, Some(tag.to_string())),
            None => (rest, None),
        },
        ImageReference::Oci { .. } | ImageReference::OciArchive { .. } | ImageReference::DockerArchive { .. } => {
            match rest.split_once(':') {
                Some((file, image)) => (file, Some(image.to_string())),
                None => (rest, None),
            }
        }
        _ => (rest, None),
    };
    let mut name = match src {
        ImageReference::Docker(_) => StashName::suggest(path),
        _ => StashName::suggest(&format!("{transport}/{path}")),
    };
    name.truncate(200);
    let name = name.trim_end_matches(['-', '/']);
    let tag = Tag::suggest(&tag.unwrap_or_default());
    format!("{}{name}:{tag}", fetched::NAMESPACE)
}

/// The digest of the manifest `raw` names for this machine: its own, or
/// for an index (manifest list) that of its `linux` entry of this
/// machine's architecture.
fn platform_digest(src: &ImageReference, raw: &[u8]) -> Result<Digest> {
    let value: serde_json::Value =
        serde_json::from_slice(raw).wrap_err_with(|| format!("parsing the manifest of {src}"))?;
    let Some(entries) = value.get("manifests").and_then(serde_json::Value::as_array) else {
        return Ok(Digest::of(raw));
    };
    let arch = oci::go_arch(std::env::consts::ARCH);
    let entry = entries.iter().find(|e| {
        e.pointer("/platform/os").and_then(serde_json::Value::as_str) == Some("linux")
            && e.pointer("/platform/architecture").and_then(serde_json::Value::as_str) == Some(arch)
    });
    let digest = entry
        .and_then(|e| e.get("digest"))
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| eyre!("{src} has no image for linux/{arch}"))?;
    Digest::try_from(digest.to_string()).map_err(|e| eyre!("reading the linux/{arch} image of {src}: {e}"))
}

/// `src` pinned to the manifest `digest`, so that what is copied is what
/// was looked at: `docker://HOST/REPO@DIGEST` for a registry; other
/// transports as they are.
fn by_digest(src: &ImageReference, digest: &Digest) -> Result<ImageReference> {
    let ImageReference::Docker(rest) = src else {
        return Ok(src.clone());
    };
    let r = DockerRef::split(rest);
    let host = r.host.map(|h| format!("{h}/")).unwrap_or_default();
    format!("docker://{host}{}@{digest}", r.repository).parse()
}

/// Whether `e` says the store cannot be written (a read-only one).
fn store_is_read_only(e: &color_eyre::Report) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(crate::store::cannot_write)
    })
}

/// Brings `src`, which is no stash, into the store as the fetched image
/// [`fetched_name`] names, and pins it for this run. `resolved` is what
/// skopeo reads (`src` itself, or the archive an OBS reference names).
///
/// Only the manifest is asked for first (`skopeo inspect --raw`): when the
/// store holds that image whole, nothing is copied and only its last use
/// is recorded. Else skopeo copies it, by digest, into a staging layout
/// holding every blob of the store, so that it fetches only the blobs the
/// store lacks, and those are moved in. The copy holds no lock; moving in,
/// recording and pinning take the exclusive one. `None` when the store
/// cannot be written: the caller fetches into a scratch layout instead.
pub fn fetch_into_store(
    store: &Store,
    src: &ImageReference,
    resolved: &ImageReference,
    auth: &RegistryAuth,
) -> Result<Option<Kept>> {
    let key = fetched_name(src);
    let source = src.to_string();
    let raw = skopeo::inspect_raw(resolved, auth)?;
    let digest = platform_digest(src, &raw)?;
    let staging = match store
        .lock_for_staging()
        .and_then(|shared| Ok((store.temp_dir("fetch")?, shared)))
    {
        Ok((staging, _shared)) => staging,
        Err(e) if store_is_read_only(&e) => {
            if let Some(lock) = store.lock_shared()? {
                let index = store.index()?;
                let known = held(store, &index, &source, &digest);
                if let Some(desc) = known {
                    log::info!(
                        "{src} is in the stash store {} ({}), which cannot be written: read from there, its use not recorded",
                        store.root().display(),
                        desc.sha256()?.short()
                    );
                    return Ok(Some(Kept {
                        desc,
                        hold: Hold::Lock(lock),
                    }));
                }
            }
            log::info!(
                "the stash store {} cannot be written ({e:#}): {src} is fetched into a scratch layout, and not kept",
                store.root().display()
            );
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    {
        let lock = store.lock_exclusive()?;
        let index = store.index()?;
        let before = refuse_a_stash(store, &index, &key)?;
        let known = held(store, &index, &source, &digest);
        if let Some(desc) = known {
            let said = |d: &Descriptor| -> Result<String> {
                Ok(format!(
                    "{src} is in the store as {key} ({}): nothing to fetch",
                    d.sha256()?.short()
                ))
            };
            return record_fetched(store, index, (&key, &source, &digest), before, desc, &lock, said).map(Some);
        }
    }
    let shared = store.lock_for_staging()?;
    staging_layout(store, staging.path())?;
    drop(shared);
    let dst = ImageReference::Oci {
        dir: staging.path().to_string_lossy().into_owned(),
        image: Some("fetched".to_string()),
    };
    let from = by_digest(resolved, &digest)?;
    let progress = crate::progress::spinner(&format!("fetching {src}"));
    let copied = skopeo::copy(&from, &dst, auth, Compression::Keep).wrap_err_with(|| format!("fetching {src}"));
    progress.finish_and_clear();
    copied?;
    let staged = Layout::new(staging.path()).read_index()?;
    let desc = store
        .find(&staged, "fetched")
        .ok_or_else(|| eyre!("skopeo stored no image for {src}"))?;
    let mut blobs = Vec::new();
    reachable(staging.path(), &desc, &mut blobs)?;
    blobs.reverse();
    let lock = store.lock_exclusive()?;
    let index = store.index()?;
    let before = refuse_a_stash(store, &index, &key)?;
    let (new_blobs, new_bytes) = move_in(store, staging.path(), blobs, src, &lock)?;
    let said = |d: &Descriptor| -> Result<String> {
        Ok(format!(
            "fetched {src} into the store as {key} ({}; {new_blobs} new blobs, {})",
            d.sha256()?.short(),
            crate::listing::human_size(new_bytes)
        ))
    };
    record_fetched(store, index, (&key, &source, &digest), before, desc, &lock, said).map(Some)
}

/// Names `desc` `key` in `index` as fetched from `source` (whose manifest
/// there has the digest given), in place of `before`, writes the index,
/// logs what `said` says, frees what only `before` used, and pins it.
fn record_fetched(
    store: &Store,
    mut index: ImageIndex,
    (key, source, digest): (&str, &str, &Digest),
    before: Option<Descriptor>,
    mut desc: Descriptor,
    lock: &Lock,
    said: impl FnOnce(&Descriptor) -> Result<String>,
) -> Result<Kept> {
    desc.unannotate(REF_NAME);
    fetched::mark(&mut desc, source, digest, before.as_ref(), SystemTime::now());
    Store::set_ref(&mut index, key, desc.clone());
    store.write_index(&index, lock)?;
    log::info!("{}", said(&desc)?);
    free_replaced(store, &index, key, before.as_ref(), &desc, lock);
    let pin = pin_fetched(store, key, &desc, lock)?;
    Ok(Kept {
        desc,
        hold: Hold::Pin(pin),
    })
}

/// The fetched image `key` of `index`, if any; an error when `key` is a
/// stash of the user's, which a fetch never replaces.
fn refuse_a_stash(store: &Store, index: &ImageIndex, key: &str) -> Result<Option<Descriptor>> {
    match store.find(index, key) {
        Some(d) if !fetched::is_fetched(&d) => Err(eyre!(
            "the store has a stash {key} of its own: a fetched image is not stored over it"
        ))
        .suggestion(format!(
            "rename or remove that stash (kiwi-stackbuild stash --rm {key})"
        )),
        found => Ok(found),
    }
}

/// Frees the blobs that only the image `key` named `before` (another one
/// than `desc`, its tag having moved at the source) used, so that a tag
/// fetched again and again does not pile up images no ref names. Best
/// effort: what stops the collection (a broken entry) is logged, and
/// `stash --rm` or `--prune` frees them later.
fn free_replaced(
    store: &Store,
    index: &ImageIndex,
    key: &str,
    before: Option<&Descriptor>,
    desc: &Descriptor,
    lock: &Lock,
) {
    if before.is_none_or(|b| b.digest() == desc.digest()) {
        return;
    }
    match store.collect_garbage(index, lock) {
        Ok(freed) => log::info!("{key} named another image before: {freed} blobs no ref uses any more freed"),
        Err(e) => log::warn!("{key} named another image before, whose blobs stay: {e:#}"),
    }
}

/// [`Store::pin`] of a fetched image, in a store known to be writable.
fn pin_fetched(store: &Store, key: &str, desc: &Descriptor, lock: &Lock) -> Result<Scratch> {
    store.pin(key, desc, lock)?.ok_or_else(|| {
        eyre!(
            "cannot pin {key}: the stash store {} cannot be written",
            store.root().display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetched_images_are_named_after_their_reference_in_a_namespace_of_their_own() {
        let hex = "a".repeat(64);
        let cases = [
            (
                "docker://127.0.0.1:5000/ns/debian:12",
                "fetched/127-0-0-1-5000/ns/debian:12",
            ),
            (
                "docker://registry.example/kiwi/base",
                "fetched/registry-example/kiwi/base:latest",
            ),
            ("docker://debian:bookworm", "fetched/debian:bookworm"),
            (
                &format!("docker://quay.io/a/b@sha256:{hex}"),
                &format!("fetched/quay-io/a/b:sha256-{hex}"),
            ),
            (
                "oci-archive:/var/tmp/base.tar",
                "fetched/oci-archive/var/tmp/base-tar:latest",
            ),
            ("oci:/srv/layout:base:1", "fetched/oci/srv/layout:base-1"),
            ("docker-archive:/tmp/x.tar:x:2", "fetched/docker-archive/tmp/x-tar:x-2"),
            (
                "containers-storage:localhost/base:3",
                "fetched/containers-storage/localhost/base:3",
            ),
            ("dir:/tmp/img", "fetched/dir/tmp/img:latest"),
        ];
        for (reference, want) in cases {
            let r: ImageReference = reference.parse().unwrap();
            let got = fetched_name(&r);
            assert_eq!(got, want, "{reference}");
            let stash: ImageReference = got.parse().unwrap();
            assert!(matches!(stash, ImageReference::Stash(_)), "{got} is no stash name");
        }
    }

    #[test]
    fn an_index_is_read_for_this_machines_image() {
        let src: ImageReference = "docker://r.example/a:1".parse().unwrap();
        let arch = oci::go_arch(std::env::consts::ARCH);
        let (mine, other) = (Digest::of(b"mine"), Digest::of(b"other"));
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"digest": other.to_string(), "platform": {"os": "linux", "architecture": "s390x-not"}},
            {"digest": mine.to_string(), "platform": {"os": "linux", "architecture": arch}},
        ]});
        let raw = index.to_string();
        assert_eq!(platform_digest(&src, raw.as_bytes()).unwrap(), mine);
        let manifest = br#"{"schemaVersion":2,"layers":[]}"#;
        assert_eq!(platform_digest(&src, manifest).unwrap(), Digest::of(manifest));
        let none = serde_json::json!({"manifests": []}).to_string();
        assert!(platform_digest(&src, none.as_bytes()).is_err());
        assert_eq!(
            by_digest(&src, &mine).unwrap().to_string(),
            format!("docker://r.example/a@{mine}")
        );
    }
}
