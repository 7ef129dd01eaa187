//! Storing a root tree in the local store: a first layer, or one delta layer
//! on top of the stash of the same name.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use color_eyre::eyre::{eyre, Result, WrapErr};
use color_eyre::Section;

use crate::description::Document;
use crate::labels::Facts;
use crate::layer::tree::Tree;
use crate::layer::{cache, scan, write, StackedLayer};
use crate::listing::human_size;
use crate::oci::{
    self, Descriptor, DescriptorExt, Digest, History, ImageConfig, ImageManifest, MediaType, RootFs, RuntimeConfig,
};
use crate::reference::{StashName, Tag};
use crate::restore::{self, Fetched};
use crate::store::{Store, TempBlob};

/// What a stash run stored.
#[derive(Debug, Clone)]
pub struct Stashed {
    /// `name:tag`.
    pub key: String,
    /// The other `name:tag`s that point at the same image.
    pub also: Vec<String>,
    /// Layers of the new image.
    pub layers: usize,
    /// The new layer; `None` when the tree was the base's, unchanged.
    pub layer: Option<write::Layer>,
    /// The stash this one was put on, when there was one.
    pub base: Option<String>,
}

/// `SOURCE_DATE_EPOCH` when set, so timestamps we write are reproducible.
pub fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| eyre!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(None),
    }
}

fn now(epoch: Option<i64>) -> i64 {
    epoch.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    })
}

/// The facts of a KIWI root: its `/image/config.xml`, the host's
/// architecture (or `target_arch`), OBS's disturl.
pub fn facts_of_root(root: &Path, target_arch: Option<&str>) -> Result<Facts> {
    if !root.is_dir() {
        let what = if root.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(eyre!("the root tree {} {what}", root.display()))
            .suggestion("stash the image-root of a KIWI build (TARGET/build/image-root)");
    }
    let config = root.join("image/config.xml");
    if !config.is_file() {
        return Err(eyre!(
            "{} is not a KIWI root tree: it has no image/config.xml",
            root.display()
        ))
        .suggestion("stash the image-root of a KIWI build (TARGET/build/image-root)");
    }
    let bytes = std::fs::read(&config).wrap_err_with(|| format!("reading {}", config.display()))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| eyre!("{} is not UTF-8 text", config.display()))?;
    let doc = Document::parse_str(text, &config.display().to_string())?;
    Ok(Facts {
        name: doc.image_name().map(str::to_string),
        version: doc.version(),
        author: doc.author(),
        package_manager: doc.package_manager(),
        architecture: Some(target_arch.unwrap_or(std::env::consts::ARCH).to_string()),
        distribution: doc.distribution(),
        description_sha256: Some(Digest::of(&bytes).hex().to_string()),
        kiwi_version: None,
        bases: Vec::new(),
        disturl: crate::obs::disturl(),
        inputs: None,
    })
}

/// The image a new stash goes on top of.
#[derive(Debug, Clone)]
pub struct Base {
    /// Its layers, lowest first, with the layouts that hold them.
    pub layers: Vec<StackedLayer>,
    /// The config to start from (labels, history, runtime config).
    pub config: ImageConfig,
    /// `ref@digest` of every image it was made of, lowest first.
    pub names: Vec<String>,
    /// Its manifest in the store, when it is one stash of the store.
    pub stored: Option<Descriptor>,
}

impl Base {
    /// The stash `d` of `store` as a base.
    pub fn from_store(store: &Store, d: &Descriptor) -> Result<Base> {
        Base::read(store, d, "the stash to add a layer to")
    }

    /// The stash `d` of `store`, read as `what` (for the error).
    fn read(store: &Store, d: &Descriptor, what: &str) -> Result<Base> {
        let name = ref_name(d);
        let read = || -> Result<(ImageManifest, ImageConfig)> {
            let m = store.manifest(&d.sha256()?)?;
            let config = store.config(&m.config().sha256()?)?;
            Ok((m, config))
        };
        let (m, config) = read()
            .wrap_err_with(|| format!("reading {name}, {what}"))
            .suggestion(format!(
                "see kiwi-stackbuild stash --check; remove the broken stash with \
                 kiwi-stackbuild stash --rm {name}, or stash under another --container-name"
            ))?;
        let layers = m
            .layers()
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(l, id)| StackedLayer {
                layout: store.root().to_path_buf(),
                layer: l.clone(),
                diff_id: id.clone(),
            })
            .collect();
        Ok(Base {
            layers,
            config,
            names: vec![format!("{}@{}", ref_name(d), d.digest())],
            stored: Some(d.clone()),
        })
    }

    /// The stack of `images` (already fetched) as a base.
    pub fn from_images(images: &[Fetched]) -> Result<Base> {
        let layers = restore::stack(images)?;
        let names = images.iter().map(|i| format!("{}@{}", i.reference, i.digest)).collect();
        let top = images.last().ok_or_else(|| eyre!("no image to stack"))?;
        let mut config = top.config.clone();
        if layers.len() != top.manifest.layers().len() {
            // Several images stacked: the top's history no longer matches.
            config.history = layers
                .iter()
                .map(|l| History {
                    created_by: Some(format!("stacked layer {}", l.layer.digest())),
                    ..History::default()
                })
                .collect();
        }
        config.rootfs.diff_ids = layers.iter().map(|l| l.diff_id.clone()).collect();
        Ok(Base {
            layers,
            config,
            names,
            stored: None,
        })
    }
}

/// What a stash prepared under the shared lock: the new layer and the base
/// layers of other layouts, as temp files of the store, and the image.
struct Staged {
    /// The new layer; `None` when the tree is the base's.
    layer: Option<(write::Layer, TempBlob)>,
    imports: Vec<(Digest, TempBlob)>,
    image: Made,
    layers: usize,
    base_name: Option<(String, String)>,
}

/// The image a stash tags.
enum Made {
    /// A new config and manifest, to be written.
    New(Box<(ImageConfig, ImageManifest)>),
    /// The base's manifest as it is in the store.
    Stored(Box<Descriptor>),
}

/// Stores `root` as `name:tag` (and as `name:T` for every T of `also`, the
/// same manifest, in the same index change), as one delta layer on `base` when given,
/// else on the stash of that name (the same tag, else its newest tag), else
/// as a first layer. The tree is read and its layer written under the
/// store's shared lock; the exclusive lock is held only to move the blobs
/// in and replace the index.
pub fn stash(
    store: &Store,
    root: &Path,
    name: &StashName,
    tag: &Tag,
    also: &[Tag],
    mut facts: Facts,
    base: Option<Base>,
) -> Result<Stashed> {
    let epoch = source_date_epoch()?;
    let key = format!("{name}:{tag}");
    let also: Vec<String> = also
        .iter()
        .filter(|t| *t != tag)
        .map(|t| format!("{name}:{t}"))
        .collect();
    // A child process: asked before any lock, so that nobody waits on it.
    facts.kiwi_version = crate::tools::Tool::KiwiNg
        .locate()
        .ok()
        .and_then(|_| crate::tools::kiwi::version().ok());
    let shared = store.lock_for_staging()?;
    let base = match base {
        Some(b) => Some(b),
        None => {
            let index = store.index()?;
            store
                .find(&index, &key)
                .or_else(|| store.latest_of(&index, name.as_str()))
                .map(|d| Base::from_store(store, &d))
                .transpose()?
        }
    };
    let staged = stage(store, root, base.as_ref(), facts, epoch)?;
    crate::fault::point("stash-layer-written");
    // flock cannot turn a shared lock into an exclusive one atomically, and
    // a garbage collection may run in between: what the image needs is
    // checked again under the exclusive lock.
    drop(shared);
    crate::fault::point("stash-between-locks");
    let lock = store.lock_exclusive()?;
    let mut index = store.index()?;
    if let Some(b) = &base {
        check_base(store, b)?;
    }
    let Staged {
        layer,
        imports,
        image,
        layers,
        base_name,
    } = staged;
    for (digest, file) in imports {
        file.store_as(store, &digest, &lock)?;
    }
    let layer = match layer {
        Some((layer, file)) => {
            file.store_as(store, &layer.digest, &lock)?;
            Some(layer)
        }
        None => None,
    };
    crate::fault::point("stash-after-layer");
    let manifest_desc = match image {
        Made::New(made) => {
            let (config, manifest) = *made;
            store.put_json(&config, MediaType::ImageConfig)?;
            crate::fault::point("stash-after-config");
            let desc = store.put_json(&manifest, MediaType::ImageManifest)?;
            crate::fault::point("stash-after-manifest");
            desc
        }
        Made::Stored(desc) => {
            let desc = *desc;
            // The base's blobs are in the store: check_base saw its layers,
            // and its manifest and config are what the index names.
            store.manifest(&desc.sha256()?)?;
            desc
        }
    };
    for other in &also {
        Store::set_ref(&mut index, other, manifest_desc.clone());
    }
    Store::set_ref(&mut index, &key, manifest_desc);
    crate::fault::point("stash-before-index");
    store.write_index(&index, &lock)?;
    crate::fault::point("stash-after-index");
    if layer.is_none() {
        let since = base_name.as_ref().map_or("its base", |(n, _)| n.as_str());
        log::info!("{key} is unchanged since {since}: tagged, no layer added");
    }
    if let Some(warning) = many_layers_warning(&key, layers) {
        log::warn!("{warning}");
    }
    Ok(Stashed {
        key,
        also,
        layers,
        layer,
        base: base_name.map(|(n, _)| n),
    })
}

/// Fails when a blob of `base` that the store held is gone (a `stash --rm`
/// ran between the locks). Needs the exclusive lock.
fn check_base(store: &Store, base: &Base) -> Result<()> {
    let gone = base
        .layers
        .iter()
        .filter(|l| l.layout == store.root())
        .find(|l| !l.layer.sha256().is_ok_and(|d| store.blob_path(&d).exists()));
    match gone {
        Some(l) => Err(eyre!(
            "the base {} was removed while stashing (its layer {} is gone); run the stash again",
            base.names.join(" + "),
            l.layer
                .sha256()
                .map_or_else(|_| l.layer.digest().to_string(), |d| d.short().to_string())
        )),
        None => Ok(()),
    }
}

/// Reads `root`, writes its layer over `base` into a temp file of the store,
/// and makes the new image's config and manifest. When the tree is the
/// base's, no layer is written and the image is the base's. Needs the
/// shared lock.
fn stage(store: &Store, root: &Path, base: Option<&Base>, mut facts: Facts, epoch: Option<i64>) -> Result<Staged> {
    // First, so that a store we cannot write to fails before the slow part.
    let layer_file = store.temp_blob("layer")?;
    let base_ids: Vec<Digest> = base
        .iter()
        .flat_map(|b| b.layers.iter().map(|l| l.diff_id.clone()))
        .collect();
    let mut imports = Vec::new();
    let mut cached = false;
    let mut record = None;
    let mut lower = match base {
        Some(b) => {
            let tree;
            (tree, cached, record) = lower_tree(store, b, &base_ids)?;
            // Taken even when the store has the blob now (a hard link from a
            // pin costs nothing): a removal between the locks may free it.
            for l in b.layers.iter().filter(|l| l.layout != store.root()) {
                let digest = l.layer.sha256()?;
                let file = store.temp_blob_from(&oci::blob_path(&l.layout, &digest))?;
                imports.push((digest, file));
            }
            tree
        }
        None => Tree::new(),
    };
    let started = Instant::now();
    let previous = record.as_ref().map(|record| scan::Previous { tree: &lower, record });
    let scan = scan::scan_since(root, previous, store.compression().jobs)
        .wrap_err_with(|| format!("reading {}", root.display()))?;
    // Only the scan's own record is written again.
    drop(record);
    log::debug!(
        "read {} entries of {} in {:.2?} ({} as the last scan of it recorded)",
        scan.len(),
        root.display(),
        started.elapsed(),
        scan.reused()
    );
    if let Some(b) = base {
        let older = b.config.labels().get(crate::labels::BASES).cloned().unwrap_or_default();
        facts.bases = older.split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect();
        if lower.first_difference_from(&scan).is_none() {
            if !cached || scan.fresh() > 0 {
                // Read from the layers, or from another root, or with
                // entries read anew: kept, so that the next stash need not.
                let record = scan.record_for(&lower);
                remember_tree(store, &base_ids, cache::prepare(store.root(), &lower, record.as_ref()));
            }
            let (image, base_name) = unchanged(&mut facts, b, epoch)?;
            return Ok(Staged {
                layer: None,
                imports,
                image,
                layers: b.layers.len(),
                base_name,
            });
        }
        facts.bases.extend(b.names.iter().cloned());
    }
    let plan = write::plan(&scan, &lower);
    write::checked(&plan, &mut lower).wrap_err_with(|| format!("storing {}", root.display()))?;
    // The tree is written to the cache now, so that it is not held while the
    // layer is compressed; it is named once the layer's diff_id is known.
    let pending = cache::prepare(store.root(), &lower, scan.record_for(&lower).as_ref());
    drop(lower);
    let layer = write::write(&plan, layer_file.file(), store.compression())?;
    log::info!(
        "stored {} of {} entries ({} whiteouts) of {} as a {} layer in {:.2?}",
        layer.entries - layer.whiteouts,
        scan.len(),
        layer.whiteouts,
        root.display(),
        human_size(layer.size),
        started.elapsed()
    );
    let ids: Vec<Digest> = base_ids.iter().chain([&layer.diff_id]).cloned().collect();
    remember_tree(store, &ids, pending);
    let (config, manifest, base_name) = image(&facts, base, &layer, epoch)?;
    Ok(Staged {
        layers: manifest.layers().len(),
        layer: Some((layer, layer_file)),
        imports,
        image: Made::New(Box::new((config, manifest))),
        base_name,
    })
}

/// The image of a root that is `base`'s tree, unchanged: `base`'s own when
/// the facts recorded in its config are the same (and it is a stash of the
/// store), else a new config and manifest with the same layers and no new
/// history entry.
fn unchanged(facts: &mut Facts, base: &Base, epoch: Option<i64>) -> Result<(Made, Option<(String, String)>)> {
    let mut config = base.config.clone();
    describe(&mut config, facts);
    let same = serde_json::to_value(&config)? == serde_json::to_value(&base.config)?;
    let base_name = base_name(Some(base));
    let image = match (&base.stored, same) {
        (Some(desc), true) => Made::Stored(Box::new(desc.clone())),
        _ => {
            log::debug!("the facts of the unchanged tree differ from its base's: a new config");
            facts.bases.extend(base.names.iter().cloned());
            let created = oci::rfc3339(now(epoch));
            config.created = Some(created.clone());
            describe(&mut config, facts);
            let layers = base.layers.iter().map(|l| l.layer.clone()).collect();
            let config_desc = oci::describe_json(&config, MediaType::ImageConfig)?;
            let bn = base_name.as_ref().map(|(n, d)| (n.as_str(), d.as_str()));
            let manifest = oci::manifest(config_desc, layers, facts.annotations(&created, bn))?;
            Made::New(Box::new((config, manifest)))
        }
    };
    Ok((image, base_name))
}

/// The tree of `base`, whether it came from the cache (else it is read
/// from its layers), and the record of the scan that read it, if the cache
/// has one.
fn lower_tree(store: &Store, b: &Base, base_ids: &[Digest]) -> Result<(Tree, bool, Option<scan::Record>)> {
    let started = Instant::now();
    let cached = cache::chain_id(base_ids).and_then(|c| cache::load(store.root(), &c));
    let from_cache = cached.is_some();
    let (tree, record) = match cached {
        Some(found) => found,
        None => (
            Tree::replay(&b.layers).wrap_err_with(|| format!("reading {}", b.names.join(" + ")))?,
            None,
        ),
    };
    log::debug!(
        "read {} entries of {} in {:.2?}",
        tree.len(),
        b.names.join(" + "),
        started.elapsed()
    );
    Ok((tree, from_cache, record))
}

/// An image config, its manifest, and the name and digest of the base the
/// manifest names.
type Image = (ImageConfig, ImageManifest, Option<(String, String)>);

/// What `facts` say in a config: author, platform, labels.
fn describe(config: &mut ImageConfig, facts: &Facts) {
    config.author = facts.author.clone();
    config.architecture = oci::go_arch(facts.architecture.as_deref().unwrap_or(std::env::consts::ARCH)).to_string();
    config.os = "linux".into();
    config.rootfs.kind = "layers".into();
    let mut labels = config.labels();
    labels.retain(|k, _| !k.starts_with(crate::labels::PREFIX) && k != crate::labels::OBS_DISTURL);
    labels.extend(facts.labels());
    config.config.labels = Some(labels);
}

/// The name and digest of the image `base` names last.
fn base_name(base: Option<&Base>) -> Option<(String, String)> {
    base.and_then(|b| b.names.last())
        .and_then(|n| n.rsplit_once('@'))
        .map(|(n, d)| (n.to_string(), d.to_string()))
}

/// The image `layer` makes on `base`.
fn image(facts: &Facts, base: Option<&Base>, layer: &write::Layer, epoch: Option<i64>) -> Result<Image> {
    let created = oci::rfc3339(now(epoch));
    let (mut config, mut layers) = match base {
        Some(b) => (b.config.clone(), b.layers.iter().map(|l| l.layer.clone()).collect()),
        None => (new_config(), Vec::new()),
    };
    config.created = Some(created.clone());
    describe(&mut config, facts);
    config.rootfs.diff_ids.push(layer.diff_id.clone());
    config.history.push(History {
        created: Some(created.clone()),
        created_by: Some(format!("kiwi-stackbuild {} stash", env!("CARGO_PKG_VERSION"))),
        author: facts.author.clone(),
        comment: Some(
            if base.is_some() {
                "KIWI root tree delta"
            } else {
                "KIWI root tree"
            }
            .into(),
        ),
        empty_layer: false,
    });
    layers.push(Descriptor::new(layer.media_type.clone(), layer.size, &layer.digest));
    let config_desc = oci::describe_json(&config, MediaType::ImageConfig)?;
    let base_name = base_name(base);
    let annotations = facts.annotations(&created, base_name.as_ref().map(|(n, d)| (n.as_str(), d.as_str())));
    let manifest = oci::manifest(config_desc, layers, annotations)?;
    Ok((config, manifest, base_name))
}

/// Names the cache file of the tree the layers with diff_ids `ids` make
/// (for a new image, written before its layer), so the next stash on top of
/// it need not read its layers back. A cache that cannot be written only
/// costs that time.
fn remember_tree(store: &Store, ids: &[Digest], pending: Result<cache::Pending>) {
    let Some(chain) = cache::chain_id(ids) else { return };
    if let Err(e) = pending.and_then(|p| p.commit(store.root(), &chain)) {
        log::debug!("not caching the tree of {chain}: {e}");
    }
}

fn new_config() -> ImageConfig {
    ImageConfig {
        os: "linux".into(),
        config: RuntimeConfig {
            cmd: Some(vec!["/bin/sh".into()]),
            ..RuntimeConfig::default()
        },
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        },
        ..ImageConfig::default()
    }
}

fn ref_name(d: &Descriptor) -> String {
    d.ref_name().map_or_else(|| d.digest().to_string(), str::to_string)
}

/// Images with more layers than this get a warning when stashed: container
/// runtimes refuse images past about 127 layers (overlayfs's limit).
pub const MANY_LAYERS: usize = 100;

/// The warning for an image `key` of `layers` layers, when it has more
/// than [`MANY_LAYERS`].
pub fn many_layers_warning(key: &str, layers: usize) -> Option<String> {
    (layers > MANY_LAYERS).then(|| {
        format!(
            "{key} has {layers} layers; container runtimes refuse images past about 127: \
             run `kiwi-stackbuild stash --squash {key}`"
        )
    })
}

/// What `stash --squash` did.
#[derive(Debug, Clone)]
pub enum Squash {
    /// The image has one layer (or none) already: nothing was changed.
    AlreadyOne {
        /// Its layers.
        layers: usize,
    },
    /// `key` now names a new image of one layer.
    Done {
        /// The layers of the image before.
        layers_before: usize,
        /// The one new layer.
        layer: write::Layer,
        /// The other tags that still name the image before.
        kept_by: Vec<String>,
        /// Blobs no stash used any more, freed.
        freed: usize,
    },
}

/// Rewrites the stash `key` (`name:tag`) as an image of one layer that holds
/// the same tree, and points `key` at it; other tags of the image before
/// keep it. The config keeps everything but its history (one entry now) and
/// diff_ids. The tree is unpacked by the confined extractor into a scratch
/// directory of the store, scanned, written as a first layer, and that
/// layer's tree must equal the tree the old layers make, entry for entry.
/// Needs root, for owners and device nodes. Locks as [`stash`] does; when
/// `key` changes meanwhile (removed, stashed again), nothing is changed.
pub fn squash(store: &Store, key: &str) -> Result<Squash> {
    let epoch = source_date_epoch()?;
    let shared = store.lock_shared()?;
    let d = store.resolve(key)?;
    let old = Base::read(store, &d, "the stash to squash")?;
    let layers_before = old.layers.len();
    if layers_before <= 1 {
        return Ok(Squash::AlreadyOne { layers: layers_before });
    }
    let started = Instant::now();
    let scratch = store.temp_dir("squash")?;
    let rootfs = scratch.path().join("rootfs");
    {
        let progress = crate::progress::spinner(&format!("unpacking {layers_before} layers of {key}"));
        let unpacked = crate::layer::extract::unpack(&old.layers, &rootfs);
        progress.finish_and_clear();
        unpacked.wrap_err_with(|| format!("unpacking {key} to squash it"))?;
    }
    crate::fault::point("squash-unpacked");
    let layer_file = store.temp_blob("layer")?;
    let old_ids: Vec<Digest> = old.layers.iter().map(|l| l.diff_id.clone()).collect();
    let (mut before, _, _) = lower_tree(store, &old, &old_ids)?;
    if before.get(b"").is_none() {
        // Layers without a root entry: the unpacker's root is 0755 root:root.
        before.insert(b"", &default_root());
    }
    let mut scanned = scan::scan(&rootfs).wrap_err_with(|| format!("reading {key} as unpacked"))?;
    keep_policy_xattrs(&mut scanned, &before);
    let plan = write::plan(&scanned, &Tree::new());
    let mut after = Tree::new();
    write::checked(&plan, &mut after).wrap_err_with(|| format!("squashing {key}"))?;
    if let Some(path) = before.first_difference(&after) {
        return Err(eyre!(
            "squashing {key}: the unpacked tree differs from what its layers make at {}; nothing was changed",
            crate::layer::show(&path)
        ));
    }
    drop(before);
    // Read from a scratch directory: no record of a root.
    let pending = cache::prepare(store.root(), &after, None);
    drop(after);
    let layer = write::write(&plan, layer_file.file(), store.compression())?;
    drop(scratch);
    log::info!(
        "squashed {layers_before} layers of {key} ({} entries) into one {} layer in {:.2?}",
        scanned.len(),
        human_size(layer.size),
        started.elapsed()
    );
    let (config, manifest) = squashed_image(store, &d, old.config, layers_before, &layer, epoch)?;
    drop(shared);
    crate::fault::point("squash-between-locks");
    let lock = store.lock_exclusive()?;
    let mut index = store.index()?;
    match store.find(&index, key) {
        Some(now) if now.digest() == d.digest() => {}
        Some(_) => {
            return Err(eyre!(
                "{key} names another image now (stashed again, or squashed by another run); nothing was changed"
            ))
            .suggestion(format!("run kiwi-stackbuild stash --squash {key} again"))
        }
        None => return Err(eyre!("{key} was removed while squashing it; nothing was changed")),
    }
    layer_file.store_as(store, &layer.digest, &lock)?;
    store.put_json(&config, MediaType::ImageConfig)?;
    let manifest_desc = store.put_json(&manifest, MediaType::ImageManifest)?;
    Store::set_ref(&mut index, key, manifest_desc);
    crate::fault::point("squash-before-index");
    store.write_index(&index, &lock)?;
    let kept_by: Vec<String> = index
        .manifests()
        .iter()
        .filter(|m| m.digest() == d.digest())
        .filter_map(|m| m.ref_name().map(str::to_string))
        .collect();
    remember_tree(store, std::slice::from_ref(&layer.diff_id), pending);
    // The index is written: the squash is done, whatever the cleanup finds.
    let freed = store.collect_garbage(&index, &lock).unwrap_or_else(|e| {
        log::warn!("{key} is squashed, but unused blobs were not freed: {e:#} (see kiwi-stackbuild stash --check)");
        0
    });
    Ok(Squash::Done {
        layers_before,
        layer,
        kept_by,
        freed,
    })
}

/// The xattrs no unpacker restores (`security.selinux`, ...: the host's
/// policy) as the layers had them, not as the host labelled the unpacked
/// tree: the squashed layer carries what the old layers carried.
fn keep_policy_xattrs(scanned: &mut scan::Scan, before: &Tree) {
    let policy = |k: &[u8]| crate::layer::IGNORED_XATTRS.contains(&k);
    for i in 0..scanned.len() as u32 {
        let mut meta = scanned.meta(i);
        let mut xattrs: Vec<_> = meta.xattrs.iter().filter(|(k, _)| !policy(k)).cloned().collect();
        if let Some(m) = before.get(scanned.path(i)) {
            xattrs.extend(m.xattrs.iter().filter(|(k, _)| policy(k)).cloned());
            xattrs.sort();
        }
        if xattrs != meta.xattrs {
            meta.xattrs = xattrs;
            scanned.set_meta(i, &meta);
        }
    }
}

fn default_root() -> crate::layer::Meta {
    crate::layer::Meta {
        kind: crate::layer::Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: crate::layer::Time::default(),
        xattrs: Vec::new(),
    }
}

/// The config and manifest of the squash of the image `d` (whose config is
/// `config`, of `layers_before` layers) into `layer`: labels, runtime
/// config, architecture and author as they were, one history entry, one
/// diff_id; the manifest's annotations as they were, with a new creation
/// time.
fn squashed_image(
    store: &Store,
    d: &Descriptor,
    mut config: ImageConfig,
    layers_before: usize,
    layer: &write::Layer,
    epoch: Option<i64>,
) -> Result<(ImageConfig, ImageManifest)> {
    let created = oci::rfc3339(now(epoch));
    config.created = Some(created.clone());
    config.rootfs.kind = "layers".into();
    config.rootfs.diff_ids = vec![layer.diff_id.clone()];
    config.history = vec![History {
        created: Some(created.clone()),
        created_by: Some(format!("kiwi-stackbuild {} stash --squash", env!("CARGO_PKG_VERSION"))),
        author: config.author.clone(),
        comment: Some(format!("squash of {layers_before} layers ({})", d.digest())),
        empty_layer: false,
    }];
    let old = store.manifest(&d.sha256()?)?;
    let mut annotations: std::collections::BTreeMap<String, String> =
        old.annotations().clone().unwrap_or_default().into_iter().collect();
    if annotations.contains_key("org.opencontainers.image.created") {
        annotations.insert("org.opencontainers.image.created".into(), created);
    }
    let config_desc = oci::describe_json(&config, MediaType::ImageConfig)?;
    let layers = vec![Descriptor::new(layer.media_type.clone(), layer.size, &layer.digest)];
    let manifest = oci::manifest(config_desc, layers, annotations)?;
    Ok((config, manifest))
}
