//! Pull and push: images travel between registries (or any skopeo
//! transport) and the local store, fetching only blobs the store lacks.

use std::fs;
use std::io::{self, BufReader, BufWriter};
use std::path::Path;

use color_eyre::eyre::{eyre, Result, WrapErr};
use color_eyre::Section;

use crate::layer::compress::{self, Settings};
use crate::oci::layout::Layout;
use crate::oci::{self, Descriptor, DescriptorExt, Digest, ImageIndex, ImageManifest, MediaType, REF_NAME};
use crate::reference::ImageReference;
use crate::registry::RegistryAuth;
use crate::store::{Lock, Store};
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
