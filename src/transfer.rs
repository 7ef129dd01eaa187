//! Pull and push: images travel between registries (or any skopeo
//! transport) and the local store, fetching only blobs the store lacks.

use std::fs;
use std::path::Path;

use color_eyre::eyre::{eyre, Result, WrapErr};
use color_eyre::Section;

use crate::oci::{self, Descriptor, Digest, Index, Manifest, MEDIA_INDEX, MEDIA_MANIFEST, REF_NAME};
use crate::reference::ImageReference;
use crate::registry::RegistryAuth;
use crate::store::{write_atomic, Store};
use crate::tools::skopeo::{self, Compression};

/// Makes `dir` an image layout that already holds every blob of `store`
/// (hard links, or symlinks across file systems), so that skopeo copying
/// into it fetches only what the store lacks.
pub fn staging_layout(store: &Store, dir: &Path) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).wrap_err_with(|| format!("creating {}", blobs.display()))?;
    write_atomic(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    if !dir.join("index.json").exists() {
        write_atomic(&dir.join("index.json"), br#"{"schemaVersion":2,"manifests":[]}"#)?;
    }
    let Ok(entries) = fs::read_dir(store.blob_dir()) else {
        return Ok(());
    };
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
        }
    }
    Ok(())
}

/// The blobs a manifest (or index) in `layout` reaches, itself included.
fn reachable(layout: &Path, d: &Descriptor, out: &mut Vec<Digest>) -> Result<()> {
    out.push(d.digest.clone());
    let bytes = oci::read_blob(layout, &d.digest)?;
    if d.media_type == MEDIA_INDEX {
        let index: Index = serde_json::from_slice(&bytes)?;
        for m in &index.manifests {
            reachable(layout, m, out)?;
        }
    } else {
        let m: Manifest = serde_json::from_slice(&bytes).wrap_err_with(|| format!("parsing manifest {}", d.digest))?;
        out.push(m.config.digest.clone());
        out.extend(m.layers.iter().map(|l| l.digest.clone()));
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
    let media_type = value.get("mediaType")?.as_str()?;
    (media_type == MEDIA_MANIFEST || media_type == MEDIA_INDEX).then(|| Descriptor {
        media_type: media_type.to_string(),
        digest: digest.clone(),
        size: bytes.len() as u64,
        annotations: Default::default(),
        platform: None,
    })
}

/// Copies `src` into the store as `key`. Blobs the store has are not fetched
/// again; a registry image whose manifest the store has is only tagged. A
/// failed pull changes nothing in the store.
pub fn pull(store: &Store, src: &ImageReference, key: &str, auth: &RegistryAuth) -> Result<Pulled> {
    let lock = store.lock_exclusive()?;
    let mut index = store.index()?;
    if matches!(src, ImageReference::Docker(_)) {
        let raw = skopeo::inspect_raw(src, auth)?;
        if let Some(d) = known_manifest(store, &Digest::of(&raw)) {
            log::info!("{src} is in the store already ({}): nothing to fetch", d.digest.short());
            let digest = d.digest.clone();
            Store::set_ref(&mut index, key, d);
            store.write_index(&index, &lock)?;
            return Ok(Pulled {
                digest,
                new_blobs: 0,
                new_bytes: 0,
            });
        }
    }
    let staging = tempfile::Builder::new()
        .prefix(".tmp-pull-")
        .tempdir_in(store.root())
        .wrap_err("creating a staging area in the store")?;
    staging_layout(store, staging.path())?;
    let dst = ImageReference::Oci {
        dir: staging.path().to_string_lossy().into_owned(),
        image: Some(key.to_string()),
    };
    let progress = crate::progress::spinner(&format!("pulling {src}"));
    let copied = skopeo::copy(src, &dst, auth, Compression::Keep).wrap_err_with(|| format!("pulling {src}"));
    progress.finish_and_clear();
    copied?;
    let staged: Index = oci::read_json(&staging.path().join("index.json"))?;
    let desc = store
        .find(&staged, key)
        .ok_or_else(|| eyre!("skopeo stored no image for {src}"))?;
    let mut blobs = Vec::new();
    reachable(staging.path(), &desc, &mut blobs)?;
    let (mut new_blobs, mut new_bytes) = (0, 0);
    for digest in blobs {
        let dest = oci::blob_path(store.root(), &digest);
        if dest.exists() {
            continue;
        }
        let from = oci::blob_path(staging.path(), &digest);
        new_bytes += fs::metadata(&from)?.len();
        new_blobs += 1;
        fs::rename(&from, &dest).wrap_err_with(|| format!("storing blob {digest}"))?;
    }
    let digest = desc.digest.clone();
    let mut desc = desc;
    desc.annotations.remove(REF_NAME);
    Store::set_ref(&mut index, key, desc);
    store.write_index(&index, &lock)?;
    Ok(Pulled {
        digest,
        new_blobs,
        new_bytes,
    })
}

/// Pushes `src` to a registry with zstd layers. skopeo 1.9 would reuse gzip
/// layers the registry already holds instead of recompressing them, so the
/// layers are recompressed into a scratch layout first and pushed from there
/// with their digests preserved.
fn push_recompressed(src: &ImageReference, key: &str, dst: &ImageReference, auth: &RegistryAuth) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("kiwi-stackbuild-push-")
        .tempdir()
        .wrap_err("creating a scratch layout")?;
    let zstd = ImageReference::Oci {
        dir: scratch.path().to_string_lossy().into_owned(),
        image: Some(key.to_string()),
    };
    skopeo::copy(src, &zstd, auth, Compression::Zstd)?;
    skopeo::copy(&zstd, dst, auth, Compression::Exact)
}

/// Copies the stash `key` to `dst`; a registry gets only the blobs it lacks.
pub fn push(
    store: &Store,
    key: &str,
    dst: &ImageReference,
    auth: &RegistryAuth,
    compression: Compression,
) -> Result<()> {
    let _lock = store
        .lock_shared()?
        .ok_or_else(|| eyre!("no stash store at {}", store.root().display()))?;
    store.resolve(key)?;
    let src = ImageReference::Oci {
        dir: store.root().to_string_lossy().into_owned(),
        image: Some(key.to_string()),
    };
    let progress = crate::progress::spinner(&format!("pushing {key} to {dst}"));
    let copied = if compression == Compression::Zstd && matches!(dst, ImageReference::Docker(_)) {
        push_recompressed(&src, key, dst, auth)
    } else {
        skopeo::copy(&src, dst, auth, compression)
    };
    progress.finish_and_clear();
    copied.wrap_err_with(|| format!("pushing {key}")).map_err(|e| {
        if matches!(dst, ImageReference::ContainersStorage(_)) {
            e.suggestion("containers-storage needs root (or a rootless podman setup)")
        } else {
            e
        }
    })
}
