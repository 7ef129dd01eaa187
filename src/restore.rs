//! Getting images back into a root tree: fetch each reference, stack their
//! layers (DESIGN §3), and unpack them with umoci in one go.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use color_eyre::eyre::{eyre, Result, WrapErr};

use crate::oci::layout::Layout;
use crate::oci::{self, Descriptor, DescriptorExt, Digest, ImageConfig, ImageManifest, MediaType, RootFs, REF_NAME};
use crate::reference::ImageReference;
use crate::registry::RegistryAuth;
use crate::store::Store;
use crate::tools::skopeo::{self, Compression};
use crate::tools::umoci;
use crate::transfer;

/// An image ready to unpack: its manifest and config, and the layout that
/// holds its blobs.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// What the user asked for.
    pub reference: ImageReference,
    /// The layout holding the blobs (the store, or a scratch copy).
    pub layout: PathBuf,
    /// Digest of the manifest.
    pub digest: Digest,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The image config.
    pub config: ImageConfig,
}

/// Looks up a stash in the store without fetching anything, so a wrong
/// name fails before any slow step.
pub fn resolve_stash(store: &Store, reference: &ImageReference) -> Result<Option<Descriptor>> {
    match reference {
        ImageReference::Stash(r) => Ok(Some(store.resolve(&r.key())?)),
        _ => Ok(None),
    }
}

/// The image layout in a scratch directory that [`fetch`] copies images
/// other than stashes into, so that they are read as stashes are. A caller
/// makes one for all the images it fetches; the layout itself is made when
/// the first of them comes, holding every blob of the store, so that skopeo
/// fetches only what the store lacks.
#[derive(Debug)]
pub struct FetchLayout {
    dir: PathBuf,
    copied: usize,
    prepared: bool,
    symlinked: bool,
}

impl FetchLayout {
    /// The layout `scratch/fetched`, not made yet.
    pub fn in_scratch(scratch: &Path) -> FetchLayout {
        FetchLayout {
            dir: scratch.join("fetched"),
            copied: 0,
            prepared: false,
            symlinked: false,
        }
    }

    /// Whether it links to blobs of the store by symlink (the store is on
    /// another file system), so that the store's shared lock must be held
    /// while it is read.
    pub fn needs_the_lock(&self) -> bool {
        self.symlinked
    }

    /// Makes the layout when this is its first image, and names the image.
    /// Makes the layout, linking every blob of `store` into it, unless it
    /// is made. Take the store's shared lock for it.
    pub fn prepare(&mut self, store: &Store) -> Result<()> {
        if !self.prepared {
            self.symlinked = transfer::staging_layout(store, &self.dir)?;
            self.prepared = true;
        }
        Ok(())
    }

    fn next_image(&mut self, store: &Store) -> Result<(PathBuf, String)> {
        self.prepare(store)?;
        let name = format!("image-{}", self.copied);
        self.copied += 1;
        Ok((self.dir.clone(), name))
    }
}

/// Brings `reference` where umoci can read it: a stash is read in place, any
/// other reference is copied by skopeo into the layout `into`. Rebuilds and
/// merges fetch other references into the store instead
/// (`transfer::fetch_into_store`); this copy is what they fall back to
/// when the store cannot be written.
pub fn fetch(
    store: &Store,
    reference: &ImageReference,
    into: &mut FetchLayout,
    auth: &RegistryAuth,
) -> Result<Fetched> {
    let (layout, desc) = match reference {
        ImageReference::Stash(r) => (store.root().to_path_buf(), store.resolve(&r.key())?),
        other => {
            let resolved = crate::obs::resolve(other)?;
            let other = &resolved;
            let (layout, name) = into.next_image(store)?;
            let dst = ImageReference::Oci {
                dir: layout.to_string_lossy().into_owned(),
                image: Some(name.clone()),
            };
            let progress = crate::progress::spinner(&format!("fetching {other}"));
            let copied =
                skopeo::copy(other, &dst, auth, Compression::Keep).wrap_err_with(|| format!("fetching {other}"));
            progress.finish_and_clear();
            copied?;
            let index = Layout::new(&layout).read_index()?;
            let desc = index
                .manifests()
                .iter()
                .find(|d| d.ref_name() == Some(name.as_str()))
                .cloned()
                .ok_or_else(|| eyre!("skopeo stored no image for {other}"))?;
            (layout, desc)
        }
    };
    fetched_from(reference, layout, &desc)
}

/// The image `desc` of the layout at `layout` (a pin of a stash, say), as
/// `reference` asked for it.
pub fn fetched_from(reference: &ImageReference, layout: PathBuf, desc: &Descriptor) -> Result<Fetched> {
    let digest = desc.sha256()?;
    let manifest: ImageManifest = serde_json::from_slice(&oci::read_blob(&layout, &digest)?)
        .wrap_err_with(|| format!("reading the manifest of {reference}"))?;
    let config: ImageConfig = serde_json::from_slice(&oci::read_blob(&layout, &manifest.config().sha256()?)?)
        .wrap_err_with(|| format!("reading the config of {reference}"))?;
    Ok(Fetched {
        reference: reference.clone(),
        layout,
        digest,
        manifest,
        config,
    })
}

pub use crate::layer::StackedLayer;

/// The layers of `images` stacked in order: each image's layers go over the
/// ones before, except that an image whose layers start with everything
/// stacked so far (it was built on it) replaces the stack instead of
/// repeating it.
pub fn stack(images: &[Fetched]) -> Result<Vec<StackedLayer>> {
    let mut out: Vec<StackedLayer> = Vec::new();
    for img in images {
        let ids = &img.config.rootfs.diff_ids;
        if ids.len() != img.manifest.layers().len() {
            return Err(eyre!(
                "{} is inconsistent: {} layers but {} diff_ids",
                img.reference,
                img.manifest.layers().len(),
                ids.len()
            ));
        }
        let layers: Vec<StackedLayer> = img
            .manifest
            .layers()
            .iter()
            .zip(ids)
            .map(|(l, d)| StackedLayer {
                layout: img.layout.clone(),
                layer: l.clone(),
                diff_id: d.clone(),
            })
            .collect();
        let contains_stack = layers.len() >= out.len() && out.iter().zip(&layers).all(|(a, b)| a.diff_id == b.diff_id);
        if contains_stack {
            out = layers;
        } else {
            out.extend(layers);
        }
    }
    Ok(out)
}

/// What unpacks layers into a root tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpacker {
    /// Our own extractor (`extract`): umoci's semantics, about three times
    /// faster on a KIWI root, since decompression runs beside file creation.
    Builtin,
    /// `umoci raw unpack --keep-dirlinks`.
    Umoci,
}

/// The variable that picks the unpacker: `umoci`, or `builtin` (the default).
pub const UNPACKER_ENV: &str = "KIWI_STACKBUILD_UNPACKER";

impl Unpacker {
    /// The unpacker `KIWI_STACKBUILD_UNPACKER` names.
    pub fn from_env() -> Result<Unpacker> {
        match std::env::var(UNPACKER_ENV).as_deref() {
            Err(_) | Ok("") | Ok("builtin") => Ok(Unpacker::Builtin),
            Ok("umoci") => Ok(Unpacker::Umoci),
            Ok(other) => Err(eyre!(
                "{UNPACKER_ENV}={other:?} names no unpacker: use builtin or umoci"
            )),
        }
    }
}

/// Unpacks `layers`, lowest first, into `rootfs` (which must not exist).
pub fn unpack(layers: &[StackedLayer], scratch: &Path, rootfs: &Path, unpacker: Unpacker) -> Result<()> {
    std::fs::create_dir(rootfs).wrap_err_with(|| format!("creating {}", rootfs.display()))?;
    unpack_into(layers, scratch, rootfs, unpacker)
}

/// Unpacks `layers`, lowest first, into `rootfs`, an empty directory that
/// exists already and is never made again by its path here (see
/// `layer::extract::unpack_into`).
pub fn unpack_into(layers: &[StackedLayer], scratch: &Path, rootfs: &Path, unpacker: Unpacker) -> Result<()> {
    match unpacker {
        Unpacker::Builtin => {
            let progress = crate::progress::spinner(&format!("unpacking {} layers", layers.len()));
            let unpacked = crate::layer::extract::unpack_into(layers, rootfs);
            progress.finish_and_clear();
            unpacked
        }
        Unpacker::Umoci => unpack_with_umoci(layers, scratch, rootfs),
    }
}

/// Writes a layout under `scratch` whose one image is `layers` (blobs linked,
/// not copied) and unpacks it into `rootfs` with umoci.
fn unpack_with_umoci(layers: &[StackedLayer], scratch: &Path, rootfs: &Path) -> Result<()> {
    let layout = Layout::new(scratch.join("unpack"));
    layout.init()?;
    let blobs = layout.blob_dir();
    let mut layer_descs = Vec::new();
    for l in layers {
        let digest = l.layer.sha256()?;
        if oci::LayerCompression::of(l.layer.media_type())? == oci::LayerCompression::Zstd {
            // umoci 0.4 reads gzip and plain tar layers only.
            layer_descs.push(decompressed_copy(l, &layout)?);
            continue;
        }
        let link = blobs.join(digest.hex());
        if !link.exists() {
            let target = oci::blob_path(&l.layout, &digest);
            let target = fs::canonicalize(&target).wrap_err_with(|| format!("finding blob {digest}"))?;
            std::os::unix::fs::symlink(&target, &link).wrap_err_with(|| format!("linking {}", link.display()))?;
        }
        layer_descs.push(l.layer.clone());
    }
    let config = ImageConfig {
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
        },
        ..ImageConfig::default()
    };
    let config_desc = layout.put_json(&config, MediaType::ImageConfig)?;
    let manifest = oci::manifest(config_desc, layer_descs, BTreeMap::new())?;
    let mut manifest_desc = layout.put_json(&manifest, MediaType::ImageManifest)?;
    manifest_desc.annotate(REF_NAME, "root");
    let mut index = oci::empty_index();
    index.set_manifests(vec![manifest_desc]);
    layout.write_index(&index)?;
    let progress = crate::progress::spinner(&format!("unpacking {} layers", layers.len()));
    let unpacked = umoci::unpack(layout.root(), "root", rootfs);
    progress.finish_and_clear();
    unpacked
}

/// Writes the uncompressed tar of layer `l` into `layout` (named by its
/// diff_id, which it is checked against) and returns its descriptor.
fn decompressed_copy(l: &StackedLayer, layout: &Layout) -> Result<Descriptor> {
    let digest = l.layer.sha256()?;
    let src = fs::File::open(oci::blob_path(&l.layout, &digest)).wrap_err_with(|| format!("opening layer {digest}"))?;
    let mut plain = oci::decompress(std::io::BufReader::new(src), oci::LayerCompression::Zstd)?;
    let mut writer = std::io::BufWriter::new(layout.blob_writer()?);
    std::io::copy(&mut plain, &mut writer).wrap_err_with(|| format!("decompressing layer {digest}"))?;
    let writer = writer.into_inner().map_err(|e| e.into_error())?;
    let (diff_id, size) = writer.written();
    if diff_id != l.diff_id {
        return Err(eyre!(
            "layer {digest} is corrupt: it does not decompress to its diff_id"
        ));
    }
    writer.commit(Some((&diff_id, size)))?;
    Ok(Descriptor::new(MediaType::ImageLayer, size, diff_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, ids: &[&str]) -> Fetched {
        let digest = |s: &str| Digest::of(s.as_bytes());
        let layers = ids
            .iter()
            .map(|i| Descriptor::new(MediaType::from("l"), 1, digest(i)))
            .collect();
        Fetched {
            reference: name.parse().unwrap(),
            layout: PathBuf::from(format!("/{name}")),
            digest: digest(name),
            manifest: oci::manifest(
                Descriptor::new(MediaType::from("c"), 1, digest("c")),
                layers,
                BTreeMap::new(),
            )
            .unwrap(),
            config: ImageConfig {
                rootfs: RootFs {
                    kind: "layers".into(),
                    diff_ids: ids.iter().map(|i| digest(i)).collect(),
                },
                ..ImageConfig::default()
            },
        }
    }

    fn ids(stack: &[StackedLayer]) -> Vec<Digest> {
        stack.iter().map(|l| l.diff_id.clone()).collect()
    }

    #[test]
    fn stacking_applies_each_image_once() {
        let d = |s: &str| Digest::of(s.as_bytes());
        type Images<'a> = &'a [(&'a str, &'a [&'a str])];
        let cases: [(Images, &[&str]); 4] = [
            (&[("a", &["1"]), ("b", &["2", "3"])], &["1", "2", "3"]),
            // b was built on a: its layers start with a's, so a is not applied twice
            (&[("a", &["1"]), ("b", &["1", "2"])], &["1", "2"]),
            (&[("a", &["1", "2"]), ("b", &["1"])], &["1", "2", "1"]),
            (
                &[("x", &["9"]), ("a", &["1"]), ("b", &["9", "1", "2"])],
                &["9", "1", "2"],
            ),
        ];
        for (images, want) in cases {
            let images: Vec<Fetched> = images.iter().map(|(n, l)| image(n, l)).collect();
            let got = ids(&stack(&images).unwrap());
            assert_eq!(got, want.iter().map(|w| d(w)).collect::<Vec<_>>(), "{images:?}");
        }
    }
}
