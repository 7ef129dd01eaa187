//! The user-facing jobs as sequences of steps: stash and its removal,
//! rebuild and stackbuild, and the merge preview.
//!
//! A rebuild is first made a [`Plan`] (see [`plan`]): its arguments are
//! parsed into one of the workflows README describes, and everything that
//! can be checked is checked before the first slow step. Then the
//! workflow's own function runs its steps in order:
//! - W1 [`Workflow::FreshBuild`]: build a description from scratch, keep
//!   its root;
//! - W2 [`Workflow::CreateFromRoots`]: fetch stored roots, check that they
//!   fit and hold a description, unpack them, `kiwi-ng system create`;
//! - W3 [`Workflow::BuildOnRoots`]: fetch stored roots (any container),
//!   check that they fit, unpack them, build a new description on them;
//! - W4 [`Workflow::DerivedBuild`]: fetch the base a derived description
//!   names, merge the description into the base's, check, unpack, build.
//!
//! A stack (`--root` repeated, `stackbuild`) is W2 or W3 with several
//! roots; `--keep-root` ends any of them by storing the root. The steps
//! they share (fetch, check fit, unpack, run kiwi-ng, keep the root) are
//! functions of their own.

pub(crate) mod plan;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use color_eyre::eyre::{eyre, Result, WrapErr};
use color_eyre::Section;

use crate::derive::{self, Derived};
use crate::description::{self, Document};
use crate::inputs::{self, Record};
use crate::labels;
use crate::layer::compress::Settings;
use crate::listing::human_size;
use crate::reference::{ImageReference, StashName, StashRef, Tag};
use crate::registry::RegistryAuth;
use crate::restore::{self, Fetched};
use crate::stash::{self, Base};
use crate::store::Store;
use crate::tools::kiwi::{self, Globals};
use crate::tools::{self, Tool};
use crate::transfer;
pub use plan::{Plan, Workflow};

/// Where a derived build keeps its merged description, in the target.
const MERGED_DESCRIPTION: &str = "build/merged-description";

/// The name of a rebuild's scratch directory (in the target, or the
/// system's temporary directory) starts so.
const SCRATCH_PREFIX: &str = ".kiwi-stackbuild-";

/// What `rebuild` (and `stackbuild`) was asked to do.
#[derive(Debug, Clone)]
pub struct Rebuild {
    /// Images to unpack, stacked in order (W2, W3).
    pub roots: Vec<ImageReference>,
    /// The description to build (W1), given before `--`.
    pub description: Option<PathBuf>,
    /// Where to store the resulting root.
    pub keep_root: Option<ImageReference>,
    /// Build even when the pieces do not fit.
    pub force: bool,
    /// kiwi-ng's global options.
    pub globals: Globals,
    /// The arguments after `--`.
    pub kiwi_args: Vec<OsString>,
    /// What `--keep-root` recompresses the layers to when it copies the
    /// root out of the store (`None`: as they are).
    pub compression: Option<Settings>,
    /// Build from the image `--keep-root` names, prepare skipped, when it
    /// was built from the same inputs.
    pub reuse: bool,
}

/// What `stash --root` was asked to do.
#[derive(Debug)]
pub struct StashRoot<'a> {
    /// The KIWI root tree.
    pub root: &'a Path,
    /// The tag.
    pub tag: &'a Tag,
    /// The name, when not the root's `<image name>`.
    pub container_name: Option<&'a str>,
    /// The description a build of which prepared the root, whose input
    /// record is stored with it (`--description`).
    pub description: Option<&'a Path>,
    /// kiwi-ng's global options.
    pub globals: &'a Globals,
}

/// Stores the KIWI root tree `job.root` in the local store, with the input
/// record of its description when it names one. Without `--profile`, the
/// profiles are those KIWI wrote into the root's `/.profile`
/// (`kiwi_profiles`), read, never run: what the build selected.
pub fn stash(store: &Store, job: &StashRoot) -> Result<stash::Stashed> {
    tools::require_root("stash")?;
    let mut facts = stash::facts_of_root(job.root, job.globals.target_arch.as_deref())?;
    if let Some(given) = job.description {
        let file = description::find(given)?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let mut globals = job.globals.clone();
        if globals.profiles.is_empty() {
            globals.profiles = built_profiles(job.root);
        }
        let record = inputs::of_build(Some(dir), &globals, &[], Vec::new())?;
        facts.inputs = Some(record.labels());
    }
    stash_facts(store, job.root, Some(job.tag), &[], job.container_name, facts, None)
}

/// The profiles KIWI built `root` with, as it wrote them into `/.profile`
/// (`kiwi_profiles='a,b'`); none when it says none or is not there.
fn built_profiles(root: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read(root.join(".profile")) else {
        return Vec::new();
    };
    crate::obs::buildenv_value(&String::from_utf8_lossy(&text), "kiwi_profiles")
        .map(|v| v.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

/// [`stash`] with the `facts` of the root worked out (and an input record
/// added to them).
fn stash_facts(
    store: &Store,
    root: &Path,
    tag: Option<&Tag>,
    also: &[Tag],
    container_name: Option<&str>,
    facts: labels::Facts,
    base: Option<Base>,
) -> Result<stash::Stashed> {
    tools::require_root("stash")?;
    let name = match container_name.or(facts.name.as_deref()) {
        Some(n) => n.parse::<StashName>().map_err(|e| match container_name {
            Some(_) => e,
            None => e.note(format!(
                "the name comes from <image name> in {}; choose another with --container-name",
                root.join("image/config.xml").display()
            )),
        })?,
        None => {
            return Err(eyre!("{} has no image name", root.join("image/config.xml").display()))
                .suggestion("pass --container-name NAME")
        }
    };
    let tag = tag.cloned().unwrap_or_else(Tag::latest);
    let done = stash::stash(store, root, &name, &tag, also, facts, base)?;
    Ok(done)
}

fn image_root(target_dir: &Path) -> PathBuf {
    target_dir.join("build/image-root")
}

/// The file that says `T/build/image-root` is being unpacked: written before
/// the unpack starts, removed when it is complete. Found by a later run, it
/// means the unpack was killed (`kill -9`, a crash) half-way; an interrupt
/// by SIGINT, SIGTERM or SIGHUP removes the root and the marker itself.
/// Once unpacked, the root is kiwi-ng's: what a killed kiwi-ng leaves is its
/// business, and a later run only says the root exists.
fn unpack_marker(target_dir: &Path) -> PathBuf {
    target_dir.join("build/.kiwi-stackbuild-incomplete")
}

/// Runs a rebuild: makes its [`Plan`], then the steps of its workflow.
pub fn rebuild(store: &Store, job: &Rebuild, auth: &RegistryAuth) -> Result<()> {
    let plan = Plan::new(store, job)?;
    let target = &plan.pass.target_dir;
    std::fs::create_dir_all(target).wrap_err_with(|| format!("creating {}", target.display()))?;
    crate::fsutil::remove_stale(Some(target), SCRATCH_PREFIX);
    let scratch = crate::fsutil::private_tempdir(Some(target), SCRATCH_PREFIX)?;
    let s = Steps {
        store,
        job,
        plan: &plan,
        auth,
        scratch: scratch.path(),
    };
    match &plan.workflow {
        Workflow::FreshBuild { dir, .. } => fresh_build(&s, dir),
        Workflow::CreateFromRoots { roots } => create_from_roots(&s, roots),
        Workflow::BuildOnRoots { roots, dir, doc } => build_on_roots(&s, roots, dir, doc),
        Workflow::DerivedBuild(d) => derived_build(&s, d),
    }?;
    log::info!("the image is in {}", target.display());
    Ok(())
}

/// W1: run the KIWI build of the description, then keep its root.
fn fresh_build(s: &Steps, dir: &Path) -> Result<()> {
    let record = s.record(Some(dir), &[]);
    if s.reused(record.as_ref())? {
        return Ok(());
    }
    s.kiwi_build(dir, false)?;
    s.keep_root(&[], record)
}

/// W2: the steps of [`Steps::create_on`], then keep the root.
fn create_from_roots(s: &Steps, roots: &[ImageReference]) -> Result<()> {
    let record = s.record(None, roots);
    if s.reused(record.as_ref())? {
        return Ok(());
    }
    let (images, _held) = s.create_on(roots, &s.plan.pass)?;
    s.keep_root(&images, record)
}

/// W3: fetch the roots, check that they fit each other and the
/// description, unpack them, build the description on them (a copy
/// without `<packages type="bootstrap">`), then keep the root.
fn build_on_roots(s: &Steps, roots: &[ImageReference], dir: &Path, doc: &Document) -> Result<()> {
    let record = s.record(Some(dir), roots);
    if s.reused(record.as_ref())? {
        return Ok(());
    }
    let (images, mut held) = s.fetch(roots)?;
    s.check_fit(&images, Some(doc), images.len() > 1)?;
    s.unpack(&images)?;
    held.unpacked();
    s.on_unpacked_root(|_| s.kiwi_build(&without_bootstrap(doc, dir, s.scratch)?, true))?;
    s.keep_root(&images, record)
}

/// W4: fetch the base that `derived_from` names, merge the derived
/// description into the one stored in the base (read from its layers) as
/// `T/build/merged-description`, check that the base fits the merge, unpack
/// the base, build the merge on it (a copy without `<packages
/// type="bootstrap">`, which the merge keeps), then keep the root.
fn derived_build(s: &Steps, d: &Derived) -> Result<()> {
    let (images, mut held) = s.fetch(std::slice::from_ref(&d.base))?;
    let (merged, dir) = merge_into_target(d, &images[0], &s.plan.pass.target_dir, s.scratch)?;
    if let Err(e) = s.check_fit(&images, Some(&merged), false) {
        // Nothing will be built from it.
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let record = s.record(Some(&dir), std::slice::from_ref(&d.base));
    if s.reused(record.as_ref())? {
        return Ok(());
    }
    s.unpack(&images)?;
    held.unpacked();
    s.on_unpacked_root(|_| s.kiwi_build(&without_bootstrap(&merged, &dir, s.scratch)?, true))?;
    s.keep_root(&images, record)
}

/// What W2 says when its roots hold no description.
const CREATE_NEEDS_IMAGE_DIR: &str =
    "pass --description to build on it: kiwi-stackbuild rebuild --root REF -- --description DIR --target-dir DIR";

/// What keeps fetched stashes readable: their pins, for as long as the
/// rebuild runs (keeping the root may import their layers), or the store's
/// shared lock, until the unpack is done.
#[derive(Default)]
struct Held {
    pins: Vec<crate::fsutil::Scratch>,
    lock: Option<crate::store::Lock>,
}

impl Held {
    /// The unpack is done: a lock held for it goes.
    fn unpacked(&mut self) {
        self.lock = None;
    }
}

/// What the steps of a rebuild work with.
struct Steps<'a> {
    store: &'a Store,
    job: &'a Rebuild,
    plan: &'a Plan,
    auth: &'a RegistryAuth,
    /// The rebuild's private scratch directory, in the target.
    scratch: &'a Path,
}

impl Steps<'_> {
    /// Brings `roots` where they can be read, lowest first: stashes are
    /// pinned ([`Store::pin`]), other images fetched into the store (only
    /// the blobs it lacks; see [`transfer::fetch_into_store`]) and pinned
    /// too, all without holding the store's lock, so stashes and removals
    /// go on meanwhile. A read-only store keeps nothing: other images are
    /// copied into the scratch dir, and the shared lock is held until
    /// [`Held::unpacked`].
    fn fetch(&self, roots: &[ImageReference]) -> Result<(Vec<Fetched>, Held)> {
        let mut layout = restore::FetchLayout::in_scratch(self.scratch);
        let mut held = Held::default();
        let mut images = Vec::new();
        for r in roots {
            let ImageReference::Stash(stash) = r else {
                let resolved = crate::obs::resolve(r)?;
                if let Some(kept) = transfer::fetch_into_store(self.store, r, &resolved, self.auth)? {
                    images.push(restore::fetched_from(r, kept.layout(self.store), &kept.desc)?);
                    match kept.hold {
                        transfer::Hold::Pin(pin) => held.pins.push(pin),
                        transfer::Hold::Lock(lock) => held.lock = Some(lock),
                    }
                    continue;
                }
                // A read-only store: a scratch copy. Its layout links to the
                // store's blobs, made under the lock: by hard links it needs
                // the lock no more, by symlinks it keeps it until the unpack.
                let lock = self.store.lock_shared()?;
                layout.prepare(self.store)?;
                if layout.needs_the_lock() && held.lock.is_none() {
                    held.lock = lock;
                } else {
                    drop(lock);
                }
                images.push(restore::fetch(self.store, r, &mut layout, self.auth)?);
                continue;
            };
            let key = stash.key();
            let lock = self
                .store
                .lock_shared()?
                .ok_or_else(|| eyre!("no stash {key}: the store is empty"))?;
            let desc = self.store.resolve(&key)?;
            match self.store.pin(&key, &desc, &lock)? {
                Some(pin) => {
                    images.push(restore::fetched_from(r, pin.path().to_path_buf(), &desc)?);
                    held.pins.push(pin);
                }
                None => {
                    images.push(restore::fetched_from(r, self.store.root().to_path_buf(), &desc)?);
                    held.lock = Some(lock);
                }
            }
        }
        Ok((images, held))
    }

    /// [`check_fit`] with the job's target architecture and `--force`.
    fn check_fit(&self, images: &[Fetched], description: Option<&Document>, strict: bool) -> Result<()> {
        let arch = self.job.globals.target_arch.as_deref();
        check_fit(images, description, arch, strict, self.job.force)
    }

    /// Unpacks `images` into `T/build/image-root` (see [`unpack_roots`]).
    fn unpack(&self, images: &[Fetched]) -> Result<()> {
        unpack_roots(images, self.scratch, &self.plan.pass.target_dir, self.plan.unpacker)
    }

    /// Runs `build` on the unpacked root. When it fails and the root is no
    /// KIWI root tree (nothing was built on what we unpacked), the root is
    /// removed: no half-made root is left behind. A KIWI root is kiwi-ng's.
    fn on_unpacked_root(&self, build: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let root = image_root(&self.plan.pass.target_dir);
        let built = build(&root);
        if built.is_err() && !derive::is_kiwi_root(&root) {
            let _ = std::fs::remove_dir_all(&root);
        }
        built
    }

    /// Runs `kiwi-ng system build` of the description `dir`, on the
    /// unpacked root when `existing_root`.
    fn kiwi_build(&self, dir: &Path, existing_root: bool) -> Result<()> {
        let pass = &self.plan.pass;
        kiwi::run_kiwi(
            &kiwi::build_args(&self.job.globals, dir, existing_root, pass),
            &pass.target_dir,
        )
    }

    /// W2's steps on `roots` with the arguments `pass`: fetch them, check
    /// that they fit each other and hold a description in `/image` (read
    /// from their layers), unpack them, run `kiwi-ng system create` with
    /// that description. What holds the images is kept until the root is.
    fn create_on(&self, roots: &[ImageReference], pass: &kiwi::PassThrough) -> Result<(Vec<Fetched>, Held)> {
        let (images, mut held) = self.fetch(roots)?;
        self.check_fit(&images, None, images.len() > 1)?;
        check_stored_description(&images, roots, self.scratch)?;
        self.unpack(&images)?;
        held.unpacked();
        self.on_unpacked_root(|root| {
            // umoci unpacks on its own: what it made is checked as well.
            derive::kiwi_root_check(root, &describe(roots)).suggestion(CREATE_NEEDS_IMAGE_DIR)?;
            kiwi::run_kiwi(&kiwi::create_args(&self.job.globals, root, pass), &pass.target_dir)
        })?;
        Ok((images, held))
    }

    /// The input record of this build when it keeps its root (`None`
    /// otherwise), made before anything is built: over the description
    /// kiwi-ng will read in `dir` (the merged one of a derived build; none
    /// for W2), the arguments, and `roots`, the images built on. A record
    /// that cannot be made costs the build nothing: the root is kept
    /// without one, and nothing is reused.
    fn record(&self, dir: Option<&Path>, roots: &[ImageReference]) -> Option<Record> {
        self.plan.keep.as_ref()?;
        let made = inputs::resolve_bases(self.store, roots, self.auth)
            .and_then(|bases| inputs::of_build(dir, &self.job.globals, &self.plan.pass.rest, bases));
        match made {
            Ok(record) => Some(record),
            Err(e) => {
                log::warn!("the root will be kept without an input record, which cannot be made: {e:#}");
                None
            }
        }
    }

    /// `--reuse`: when the image `--keep-root` names was built from the
    /// inputs of `record`, builds from it as W2 does (no prepare), tags it
    /// as `--keep-root` would have, and says so: true. Otherwise says why
    /// the build runs: false.
    fn reused(&self, record: Option<&Record>) -> Result<bool> {
        let Some(keep) = self.plan.keep.as_ref().filter(|_| self.job.reuse) else {
            return Ok(false);
        };
        let reference = keep.reference();
        let Some(stored) = self.reusable(record, &reference) else {
            return Ok(false);
        };
        let built = stored.created.as_deref().unwrap_or("at a time it does not record");
        log::info!("inputs unchanged since {reference}, built {built}: skipping prepare");
        let (_images, _held) = self.create_on(std::slice::from_ref(&stored.image), &self.plan.pass.for_create())?;
        let keys = match &keep.copy_to {
            Some(dest) => vec![dest.to_string()],
            None => {
                let key = format!("{}:{}", keep.name, keep.tag);
                let also: Vec<String> = keep.also.iter().map(|t| format!("{}:{t}", keep.name)).collect();
                self.store.tag_as(&key, &also)?;
                std::iter::once(key).chain(also).collect()
            }
        };
        for key in keys {
            crate::listing::line(&key)?;
        }
        Ok(true)
    }

    /// The image `--keep-root` names, looked up for [`Steps::reused`]: when
    /// it carries the record `record` (the same hash, and a record that can
    /// vouch for a root), what it says; else `None`, and the log says why.
    fn reusable(&self, record: Option<&Record>, reference: &ImageReference) -> Option<inputs::Stored> {
        let Some(record) = record else {
            log::info!("--reuse: this build has no input record: building");
            return None;
        };
        if !record.reusable() {
            log::info!(
                "--reuse: the inputs cannot vouch for a root ({}): building",
                record.not_reusable.join("; ")
            );
            return None;
        }
        let stored = match inputs::stored(self.store, reference, self.auth) {
            Ok(Some(stored)) => stored,
            Ok(None) => {
                log::info!("--reuse: there is no {reference} yet: building");
                return None;
            }
            Err(e) => {
                log::warn!("--reuse: {reference} cannot be looked up ({e:#}): building");
                return None;
            }
        };
        match &stored.record {
            None => log::info!("--reuse: {reference} carries no input record: building"),
            Some(old) if old.hash != record.hash => log::info!(
                "--reuse: the inputs changed since {reference} ({}): building",
                inputs::differences(old, record).join("; ")
            ),
            Some(_) => return Some(stored),
        }
        None
    }

    /// Stores the built root as `--keep-root` says (nothing without it),
    /// with the input record `record`: on `images` when the root was
    /// unpacked from them.
    fn keep_root(&self, images: &[Fetched], record: Option<Record>) -> Result<()> {
        let Some(keep) = &self.plan.keep else {
            return Ok(());
        };
        let base = (!images.is_empty()).then(|| Base::from_images(images)).transpose()?;
        let root = image_root(&self.plan.pass.target_dir);
        let arch = self.job.globals.target_arch.as_deref();
        let mut facts = stash::facts_of_root(&root, arch)?;
        facts.inputs = record.map(|r| r.labels());
        let Some(dest) = &keep.copy_to else {
            let name = Some(keep.name.as_str());
            let done = stash_facts(self.store, &root, Some(&keep.tag), &keep.also, name, facts, base)?;
            let keys: Vec<&str> = std::iter::once(&done.key)
                .chain(&done.also)
                .map(String::as_str)
                .collect();
            let added = done.layer.as_ref().map_or_else(
                || "no new layer".to_string(),
                |l| format!("new layer {}", human_size(l.size)),
            );
            log::info!(
                "kept the root as {} ({} layers, {added})",
                keys.join(" and "),
                done.layers
            );
            for key in keys {
                crate::listing::line(key)?;
            }
            return Ok(());
        };
        tools::require(&[Tool::Skopeo])?;
        let staging = Store::new(self.scratch.join("keep")).with_compression(*self.store.compression());
        let done = stash_facts(
            &staging,
            &root,
            Some(&keep.tag),
            &[],
            Some(keep.name.as_str()),
            facts,
            base,
        )?;
        crate::transfer::copy_out(
            staging.root(),
            &done.key,
            dest,
            self.auth,
            self.job.compression.as_ref(),
        )?;
        log::info!("kept the root as {dest} ({} layers)", done.layers);
        crate::listing::line(&dest.to_string())?;
        Ok(())
    }
}

/// W2's check before anything is unpacked: the stacked `images` hold a
/// description in `/image` for `system create`, no symlink out of it, read
/// from their layers into `scratch/stored` (a derived build read its base's
/// into `scratch/base` before it was reused).
fn check_stored_description(images: &[Fetched], roots: &[ImageReference], scratch: &Path) -> Result<()> {
    let dest = scratch.join("stored");
    derive::unpack_image_dir(&restore::stack(images)?, &dest)?;
    derive::kiwi_root_check(&dest, &describe(roots)).suggestion(CREATE_NEEDS_IMAGE_DIR)?;
    derive::check_image_symlinks(&dest)
}

/// The description stored in `image` (its `/image`), read from its layers
/// into `scratch/base`, every blob verified.
fn stored_description(image: &Fetched, scratch: &Path) -> Result<PathBuf> {
    let layers = restore::stack(std::slice::from_ref(image))?;
    derive::extract_image_dir(&layers, &scratch.join("base"))
        .map_err(|e| eyre!("{e:#} (the description stored in {})", image.reference))
}

/// Merges the derived description `d` into the description stored in
/// `base` and writes it to `T/build/merged-description`, which it returns.
fn merge_into_target(d: &Derived, base: &Fetched, target: &Path, scratch: &Path) -> Result<(Document, PathBuf)> {
    let stored = stored_description(base, scratch).suggestion(
        "derive from a stash of a KIWI build, or build on it with rebuild --root REF -- --description DIR",
    )?;
    let out = target.join(MERGED_DESCRIPTION);
    if out.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&out).wrap_err_with(|| format!("removing the old {}", out.display()))?;
    }
    let merged = derive::write_merged(&stored, d, &out)?;
    log::info!(
        "merged {} into the description of {}: {}",
        d.file.display(),
        d.base,
        out.display()
    );
    Ok((merged, out))
}

/// A copy of the description without `<packages type="bootstrap">`: KIWI
/// bootstraps again whenever that element is there, which breaks a root that
/// already exists (on Debian, its usr-merge symlinks).
fn without_bootstrap(doc: &Document, dir: &Path, scratch: &Path) -> Result<PathBuf> {
    let copy = scratch.join("description");
    derive::copy_tree(dir, &copy, None)?;
    let mut doc = doc.clone();
    let removed = description::remove_bootstrap_packages(&mut doc);
    let file = description::find(&copy)?;
    if removed > 0 {
        log::info!("dropped <packages type=\"bootstrap\"> from the description: the root exists, and KIWI would bootstrap it again");
    }
    doc.write_to(&file)?;
    Ok(copy)
}

/// One side of a fit check: what it is, and what it records (`None`:
/// unknown).
struct Side {
    name: String,
    facts: [(&'static str, Option<String>); 3],
    /// An image: what it lacks is told by its label.
    image: bool,
}

/// The facts of a stored image that say whether a build fits on it.
fn image_side(image: &Fetched) -> Side {
    let l = image.config.labels();
    let get = |label: &str| l.get(label).cloned();
    Side {
        name: image.reference.to_string(),
        facts: [
            ("package manager", get(labels::PACKAGE_MANAGER)),
            ("architecture", get(labels::ARCHITECTURE)),
            ("distribution", get(labels::DISTRIBUTION)),
        ],
        image: true,
    }
}

/// Refuses to stack images, or build a description on them, when their
/// package manager, architecture or distribution differ (unless `force`).
/// Every image is checked against every other and against the description.
/// A fact one side records and an image lacks is unknown, and refused too:
/// nothing says it fits. In a stack (`strict`) an image that records none
/// of them (it was not stashed by kiwi-stackbuild) is refused; a single
/// image under a new description may be any container, so one that records
/// none is not compared. A derived build's base is checked through the
/// merged description, which carries what the base's own description says.
fn check_fit(
    images: &[Fetched],
    description: Option<&Document>,
    target_arch: Option<&str>,
    strict: bool,
    force: bool,
) -> Result<()> {
    let refuse = |err: color_eyre::Report, suggestion: &str| -> Result<()> {
        if force {
            log::warn!("{err} (going on: --force)");
            Ok(())
        } else {
            Err(err).suggestion(suggestion.to_string())
        }
    };
    let mut sides: Vec<Side> = images.iter().map(image_side).collect();
    let records_none = |s: &Side| s.facts.iter().all(|(_, v)| v.is_none());
    if strict {
        for unknown in sides.iter().filter(|s| records_none(s)) {
            refuse(
                eyre!(
                    "{} records no package manager, architecture or distribution (labels {}*): nothing says it fits",
                    unknown.name,
                    labels::PREFIX
                ),
                "stack images stashed by kiwi-stackbuild, or pass --force if you know they fit",
            )?;
        }
    }
    if let Some(doc) = description {
        sides.push(Side {
            name: format!("the description {}", doc.origin()),
            facts: [
                ("package manager", doc.package_manager()),
                (
                    "architecture",
                    Some(target_arch.unwrap_or(std::env::consts::ARCH).to_string()),
                ),
                ("distribution", doc.distribution()),
            ],
            image: false,
        });
    }
    // A foreign container under a new description is not compared at all.
    sides.retain(|s| strict || !(s.image && records_none(s)));
    for (i, a) in sides.iter().enumerate() {
        for b in &sides[i + 1..] {
            for (((what, x), (_, y)), label) in a.facts.iter().zip(&b.facts).zip(FIT_LABELS) {
                match (x, y) {
                    (Some(x), Some(y)) if x != y => refuse(
                        eyre!("{what} differs: {} has {x}, {} has {y}", a.name, b.name),
                        "build on a matching image, or pass --force if you know it works",
                    )?,
                    (Some(known), None) | (None, Some(known)) => {
                        let (lacking, other) = if x.is_none() { (a, b) } else { (b, a) };
                        if lacking.image {
                            refuse(
                                eyre!(
                                    "{what} of {} is unknown (it has no label {label}), {} has {known}",
                                    lacking.name,
                                    other.name
                                ),
                                "build on an image that records it, or pass --force if you know it fits",
                            )?;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// The labels of the facts a fit is checked on, in [`Side::facts`] order.
const FIT_LABELS: [&str; 3] = [labels::PACKAGE_MANAGER, labels::ARCHITECTURE, labels::DISTRIBUTION];

fn describe(roots: &[ImageReference]) -> String {
    roots.iter().map(ToString::to_string).collect::<Vec<_>>().join(" + ")
}

/// Unpacks `images` into `T/build/image-root`, marked incomplete until it
/// is done (see [`unpack_marker`]); a failed or interrupted unpack leaves
/// neither root nor marker.
fn unpack_roots(images: &[Fetched], scratch: &Path, target_dir: &Path, unpacker: restore::Unpacker) -> Result<()> {
    let started = Instant::now();
    let layers = restore::stack(images)?;
    let (root_dir, marker) = (image_root(target_dir), unpack_marker(target_dir));
    if let Some(parent) = root_dir.parent() {
        std::fs::create_dir_all(parent).wrap_err_with(|| format!("creating {}", parent.display()))?;
    }
    // Both are made and registered in one step, so that an interrupt cannot
    // miss them, nor have them made again once it removed them; the marker
    // first, so that it is removed last: without a root it says nothing.
    let note = format!(
        "{} is being unpacked by process {}\n",
        root_dir.display(),
        std::process::id()
    );
    let ((), marker_guard) = crate::interrupt::create(|| std::fs::write(&marker, &note), |_| marker.clone())
        .wrap_err_with(|| format!("writing {}", marker.display()))?;
    let root_guard = match crate::interrupt::create_dir(&root_dir) {
        Ok(guard) => guard,
        Err(e) => {
            let _ = std::fs::remove_file(&marker);
            return Err(e).wrap_err_with(|| format!("creating {}", root_dir.display()));
        }
    };
    let size: u64 = layers.iter().map(|l| l.layer.size()).sum();
    let unpacked = restore::unpack_into(&layers, scratch, &root_dir, unpacker);
    if unpacked.is_err() {
        let _ = std::fs::remove_dir_all(&root_dir);
    }
    drop(root_guard);
    let unmarked = std::fs::remove_file(&marker).wrap_err_with(|| format!("removing {}", marker.display()));
    drop(marker_guard);
    unpacked?;
    unmarked?;
    log::info!(
        "unpacked {} ({} layers, {}) into {} in {:.2?}",
        describe(&images.iter().map(|i| i.reference.clone()).collect::<Vec<_>>()),
        layers.len(),
        human_size(size),
        root_dir.display(),
        started.elapsed()
    );
    Ok(())
}

/// `merge`: writes the merged description of the derived description at
/// `derived` into `output`, without building. The base is `base` (a
/// description directory or an image reference), else `derived_from`.
pub fn merge_preview(
    store: &Store,
    derived: &Path,
    output: &Path,
    base: Option<&str>,
    auth: &RegistryAuth,
) -> Result<()> {
    write_merge(store, derived, output, base, auth)?;
    crate::listing::line(&output.display().to_string())
}

/// Writes the merged description of `derived` into `output` (a new
/// directory), on `base` or the image `derived_from` names.
pub fn write_merge(
    store: &Store,
    derived: &Path,
    output: &Path,
    base: Option<&str>,
    auth: &RegistryAuth,
) -> Result<()> {
    let file = description::find(derived)?;
    let d = Derived::new(Document::parse_file(&file)?, &file)?;
    let occupied = std::fs::read_dir(output)
        .map(|mut e| e.next().is_some())
        .unwrap_or(output.exists());
    if occupied {
        return Err(eyre!("{} exists and is not empty", output.display()))
            .suggestion("choose a new --output directory");
    }
    if output.exists() {
        std::fs::remove_dir(output).wrap_err_with(|| format!("replacing {}", output.display()))?;
    }
    let base_dir = base.map(Path::new).filter(|p| p.is_dir());
    if let Some(dir) = base_dir {
        derive::check_copyable(dir)?;
        derive::check_symlinks(dir)?;
        derive::write_merged(dir, &d, output)?;
    } else {
        let reference = match base {
            Some(b) => b
                .parse::<ImageReference>()
                .wrap_err_with(|| format!("--base {b} is neither a directory nor an image reference"))?,
            None => d.base.clone(),
        };
        if !matches!(reference, ImageReference::Stash(_)) {
            tools::require(&[Tool::Skopeo])?;
        }
        crate::fsutil::remove_stale(None, SCRATCH_PREFIX);
        let scratch = crate::fsutil::private_tempdir(None, SCRATCH_PREFIX)?;
        let fetching = || format!("fetching the base {reference} of {}", file.display());
        let kept = match &reference {
            ImageReference::Stash(_) => None,
            // Its errors name the reference.
            other => transfer::fetch_into_store(store, other, &crate::obs::resolve(other)?, auth)?,
        };
        let (image, _held) = match kept {
            Some(kept) => (
                restore::fetched_from(&reference, kept.layout(store), &kept.desc)?,
                Some(kept.hold),
            ),
            None => {
                let lock = store.lock_shared()?;
                let mut layout = restore::FetchLayout::in_scratch(scratch.path());
                let image = restore::fetch(store, &reference, &mut layout, auth).wrap_err_with(fetching)?;
                (image, lock.map(transfer::Hold::Lock))
            }
        };
        let stored = stored_description(&image, scratch.path())?;
        drop(_held);
        derive::write_merged(&stored, &d, output)?;
    }
    log::info!("merged {} into its base: {}", file.display(), output.display());
    Ok(())
}

/// `stash --rm`: removes `NAME:TAG`, or every tag of `NAME`, and the blobs
/// no remaining stash uses.
pub fn remove(store: &Store, r: &StashRef) -> Result<()> {
    // All tags go, or none: one change of the index.
    let (keys, freed) = match &r.tag {
        Some(_) => (vec![r.key()], store.remove(&[r.key()])?),
        None => store.remove_all_of(r.name.as_str())?,
    };
    eprintln!("removed {} ({freed} unused blobs freed)", keys.join(", "));
    Ok(())
}

/// `stash --prune --older-than AGE`: removes the fetched images no run
/// used for `age`, and the blobs no remaining stash uses.
pub fn prune(store: &Store, age: std::time::Duration) -> Result<()> {
    let (keys, freed) = store.prune(age, std::time::SystemTime::now())?;
    if keys.is_empty() {
        eprintln!("no fetched image unused for that long: nothing removed");
    } else {
        eprintln!("removed {} ({freed} unused blobs freed)", keys.join(", "));
        for key in &keys {
            crate::listing::line(key)?;
        }
    }
    Ok(())
}

/// `stash --squash`: rewrites `NAME:TAG` as an image of one layer.
pub fn squash(store: &Store, r: &StashRef) -> Result<()> {
    let key = r.key();
    if !crate::fsutil::can_set_owners() {
        return Err(eyre!(
            "stash --squash {key} needs root: its one new layer must keep every owner and device node of the tree"
        ))
        .suggestion("run it as root, e.g. with sudo");
    }
    match stash::squash(store, &key)? {
        stash::Squash::AlreadyOne { layers } => {
            eprintln!(
                "{key} has {layers} layer{} already: nothing to squash",
                if layers == 1 { "" } else { "s" }
            );
        }
        stash::Squash::Done {
            layers_before,
            layer,
            kept_by,
            freed,
        } => {
            let kept = if kept_by.is_empty() {
                String::new()
            } else {
                format!(", {} keep the image before", kept_by.join(", "))
            };
            eprintln!(
                "squashed {key}: {layers_before} layers into one of {}{kept} ({freed} unused blobs freed)",
                human_size(layer.size)
            );
            crate::listing::line(&key)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::oci::{Descriptor, Digest, ImageConfig, MediaType};

    /// An image whose config records `facts` (package manager,
    /// architecture, distribution; `None` records no label at all, an
    /// empty one lacks that label).
    fn image(name: &str, facts: Option<(&str, &str, &str)>) -> Fetched {
        let mut config = ImageConfig::default();
        if let Some((pm, arch, dist)) = facts {
            let labels: BTreeMap<String, String> = [
                (labels::PACKAGE_MANAGER, pm),
                (labels::ARCHITECTURE, arch),
                (labels::DISTRIBUTION, dist),
            ]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            config.config.labels = Some(labels);
        }
        let descriptor = Descriptor::new(MediaType::from("c"), 1, Digest::of(name.as_bytes()));
        Fetched {
            reference: name.parse().unwrap(),
            layout: PathBuf::from("/nowhere"),
            digest: Digest::of(name.as_bytes()),
            manifest: crate::oci::manifest(descriptor, Vec::new(), BTreeMap::new()).unwrap(),
            config,
        }
    }

    #[test]
    fn an_image_lacking_what_the_description_records_is_unknown() {
        let xml = r#"<image schemaversion="8.5" name="d"><preferences><packagemanager>apt</packagemanager></preferences>
            <repository type="apt-deb" distribution="trixie"><source path="http://x/debian"/></repository></image>"#;
        let doc = Document::parse_str(xml, "d.kiwi").unwrap();
        let arch = Some("x86_64");
        let partly = image("u", Some(("apt", "x86_64", "")));
        let err = format!(
            "{:#}",
            check_fit(&[partly], Some(&doc), arch, false, false).unwrap_err()
        );
        assert!(err.contains("distribution of u is unknown"), "{err}");
        // A container from elsewhere records nothing, and is not compared.
        assert!(check_fit(&[image("f", None)], Some(&doc), arch, false, false).is_ok());
        let whole = image("w", Some(("apt", "x86_64", "trixie")));
        assert!(check_fit(&[whole], Some(&doc), arch, false, false).is_ok());
    }

    #[test]
    fn every_image_of_a_stack_is_checked_against_every_other() {
        let bookworm = || image("a", Some(("apt", "x86_64", "bookworm")));
        let trixie = || image("c", Some(("apt", "x86_64", "trixie")));
        let unlabelled = || image("b", None);
        let cases: Vec<(Vec<Fetched>, bool, Option<&str>)> =
            vec![
            (vec![bookworm(), bookworm()], true, None),
            // Neighbours alone would never compare a with c.
            (
                vec![bookworm(), unlabelled(), trixie()],
                true,
                Some("records no package manager"),
            ),
            (
                vec![bookworm(), image("b", Some(("apt", "x86_64", "bookworm"))), trixie()],
                true,
                Some("distribution differs: a has bookworm, c has trixie"),
            ),
            (
                vec![bookworm(), image("z", Some(("zypper", "x86_64", "bookworm")))],
                true,
                Some("package manager differs"),
            ),
            // One container under a new description: any image will do.
            (vec![unlabelled()], false, None),
            // A fact one image records and another lacks is unknown.
            (
                vec![bookworm(), image("u", Some(("apt", "x86_64", "")))],
                true,
                Some("distribution of u is unknown (it has no label io.kiwi-stackbuild.distribution), a has bookworm"),
            ),
            (
                vec![image("u", Some(("apt", "x86_64", ""))), trixie()],
                true,
                Some("distribution of u is unknown"),
            ),
            // Where no image records it, there is nothing to compare.
            (
                vec![image("u", Some(("zypper", "x86_64", ""))), image("v", Some(("zypper", "x86_64", "")))],
                true,
                None,
            ),
        ];
        for (images, strict, want) in cases {
            let names: Vec<String> = images.iter().map(|i| i.reference.to_string()).collect();
            let got = check_fit(&images, None, None, strict, false);
            match want {
                None => assert!(got.is_ok(), "{names:?}: {got:?}"),
                Some(text) => {
                    let err = format!("{:#}", got.expect_err(text));
                    assert!(err.contains(text), "{names:?}: {err}");
                }
            }
            assert!(
                check_fit(&images, None, None, strict, true).is_ok(),
                "--force builds anyway"
            );
        }
    }
}
