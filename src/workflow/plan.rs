//! A rebuild's arguments turned into a [`Plan`]: which of the workflows
//! W1-W4 it is, with everything about it that can be checked before the
//! first slow step checked.

use std::path::{Path, PathBuf};

use color_eyre::eyre::{eyre, Result, WrapErr};
use color_eyre::Section;

use super::{image_root, unpack_marker, Rebuild};
use crate::derive::{self, Derived};
use crate::description::{self, Document};
use crate::reference::{ImageReference, StashName, StashRef, Tag};
use crate::restore::{self, Unpacker};
use crate::store::Store;
use crate::tools::kiwi::{self, PassThrough};
use crate::tools::{self, Tool};

/// A rebuild worked out from its arguments, every cheap check done: what
/// is left are the slow steps of its workflow.
#[derive(Debug)]
pub struct Plan {
    /// What is built, and on what.
    pub workflow: Workflow,
    /// The arguments after `--`, checked.
    pub pass: PassThrough,
    /// Where `--keep-root` stores the root.
    pub keep: Option<Keep>,
    /// What unpacks the roots.
    pub unpacker: Unpacker,
}

/// The forms of `rebuild`, as README and `rebuild --help` name them. A
/// stack is W2 or W3 with several roots.
#[derive(Debug)]
pub enum Workflow {
    /// W1: build a description from scratch (and keep its root).
    FreshBuild {
        /// The description's directory.
        dir: PathBuf,
        /// The description.
        doc: Document,
    },
    /// W2: unpack stored roots and run `system create` with the
    /// description stored in their `/image`.
    CreateFromRoots {
        /// The images, lowest first.
        roots: Vec<ImageReference>,
    },
    /// W3: unpack stored roots (any container will do) and build a
    /// description on them; their `/image` is ignored.
    BuildOnRoots {
        /// The images, lowest first.
        roots: Vec<ImageReference>,
        /// The description's directory.
        dir: PathBuf,
        /// The description.
        doc: Document,
    },
    /// W4: merge a derived description into the description stored in its
    /// base, and build the merge on the unpacked base.
    DerivedBuild(Derived),
}

impl Workflow {
    /// The images it builds on, lowest first.
    pub fn roots(&self) -> &[ImageReference] {
        match self {
            Workflow::FreshBuild { .. } => &[],
            Workflow::CreateFromRoots { roots } | Workflow::BuildOnRoots { roots, .. } => roots,
            Workflow::DerivedBuild(d) => std::slice::from_ref(&d.base),
        }
    }

    /// The description given on the command line.
    pub fn description(&self) -> Option<&Document> {
        match self {
            Workflow::FreshBuild { doc, .. } | Workflow::BuildOnRoots { doc, .. } => Some(doc),
            Workflow::DerivedBuild(d) => Some(&d.doc),
            Workflow::CreateFromRoots { .. } => None,
        }
    }
}

impl Plan {
    /// Checks the job before anything slow: the arguments after `--`, the
    /// target (not in the store, no root in it, none a killed run left),
    /// the description (found, parsed, and when derived, checked), the
    /// tools, root, `--keep-root`'s name and tag, and that every stash
    /// exists.
    pub fn new(store: &Store, job: &Rebuild) -> Result<Plan> {
        let builds = job.description.is_some() || kiwi::names_description(&job.kiwi_args);
        let pass = PassThrough::parse(&job.kiwi_args, builds)?;
        if job.description.is_some() && pass.description.is_some() {
            return Err(eyre!("two descriptions: --description before and after --"))
                .suggestion("give the description once");
        }
        check_target(store, &pass.target_dir)?;
        let workflow = workflow_of(job, &pass)?;
        let roots = workflow.roots();
        let mut needed = vec![Tool::KiwiNg];
        let unpacker = Unpacker::from_env()?;
        if !roots.is_empty() && unpacker == Unpacker::Umoci {
            needed.push(Tool::Umoci);
        }
        if roots.iter().any(|r| !matches!(r, ImageReference::Stash(_))) {
            needed.push(Tool::Skopeo);
        }
        tools::require(&needed)?;
        tools::require_root("rebuild")?;
        let keep = job
            .keep_root
            .as_ref()
            .map(|r| keep_target(r, workflow.description()))
            .transpose()?;
        if job.reuse && keep.is_none() {
            return Err(eyre!(
                "--reuse needs --keep-root: it compares the inputs with those of the image kept there"
            ))
            .suggestion("add --keep-root REF, the image an earlier build of the same inputs kept");
        }
        for r in roots {
            restore::resolve_stash(store, r)?;
        }
        Ok(Plan {
            workflow,
            pass,
            keep,
            unpacker,
        })
    }
}

/// Refuses a target inside the store, and one that has a root already.
fn check_target(store: &Store, target_dir: &Path) -> Result<()> {
    if crate::fsutil::is_inside(target_dir, store.root()) {
        return Err(eyre!(
            "--target-dir {} is inside the stash store {}",
            target_dir.display(),
            store.root().display()
        ))
        .suggestion("build outside the store: its garbage collection removes what it does not know");
    }
    let root_dir = image_root(target_dir);
    // T/build may be a link into the store.
    if crate::fsutil::is_inside(&root_dir, store.root()) {
        return Err(eyre!(
            "{} lies inside the stash store {}",
            root_dir.display(),
            store.root().display()
        ))
        .suggestion("build outside the store: its garbage collection removes what it does not know");
    }
    refuse_interrupted_unpack(target_dir)?;
    if root_dir.symlink_metadata().is_ok() {
        return Err(eyre!("{} already exists", root_dir.display()))
            .suggestion("choose a new --target-dir, or remove the old build first");
    }
    Ok(())
}

/// Refuses a target whose root a killed run left half-unpacked, touching
/// nothing. A marker without its root (the user removed the root, as told)
/// is only removed.
fn refuse_interrupted_unpack(target_dir: &Path) -> Result<()> {
    let (marker, root) = (unpack_marker(target_dir), image_root(target_dir));
    if marker.symlink_metadata().is_err() {
        return Ok(());
    }
    if root.symlink_metadata().is_ok() {
        return Err(eyre!("{} was left by an interrupted run", root.display()))
            .suggestion("remove it or pass a new --target-dir");
    }
    std::fs::remove_file(&marker).wrap_err_with(|| format!("removing {}", marker.display()))
}

/// Which workflow the job is: found from its roots and its description,
/// which is found, parsed and checked here.
fn workflow_of(job: &Rebuild, pass: &PassThrough) -> Result<Workflow> {
    let Some(given) = job.description.as_ref().or(pass.description.as_ref()) else {
        if job.roots.is_empty() {
            return Err(eyre!("nothing to build: no --root and no --description"))
                .suggestion("give --root REF, --description DIR, or both");
        }
        return Ok(Workflow::CreateFromRoots {
            roots: job.roots.clone(),
        });
    };
    let file = description::find(given)?;
    let doc = Document::parse_file(&file)?;
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    derive::check_copyable(&dir)?;
    if doc.derived_from().is_some() {
        if !job.roots.is_empty() {
            return Err(eyre!(
                "{} is derived (derived_from), and --root names a base too",
                file.display()
            ))
            .suggestion("drop --root: derived_from names the base");
        }
        return Ok(Workflow::DerivedBuild(Derived::new(doc, &file)?));
    }
    Ok(if job.roots.is_empty() {
        Workflow::FreshBuild { dir, doc }
    } else {
        Workflow::BuildOnRoots {
            roots: job.roots.clone(),
            dir,
            doc,
        }
    })
}

/// Where `--keep-root` stores the result: a stash `name:tag`, and for any
/// other reference the place it is copied to from there.
#[derive(Debug, Clone)]
pub struct Keep {
    /// The stash's name.
    pub name: StashName,
    /// Its tag.
    pub tag: Tag,
    /// The other tags it gets: `latest` for a bare `NAME`.
    pub also: Vec<Tag>,
    /// Where it is copied to, when `--keep-root` is no stash.
    pub copy_to: Option<ImageReference>,
}

impl Keep {
    /// The image it stores: `NAME:TAG` in the store, or where it is copied to.
    pub fn reference(&self) -> ImageReference {
        match &self.copy_to {
            Some(dest) => dest.clone(),
            None => ImageReference::Stash(StashRef {
                name: self.name.clone(),
                tag: Some(self.tag.clone()),
            }),
        }
    }
}

/// Works out the stash name and tag of `--keep-root` before anything runs:
/// a missing tag is the description's `<version>`, a missing name (for
/// `oci:DIR` and the like) its `<image name>`. A bare stash `NAME` is
/// tagged `latest` as well, so that `--root NAME` (which means
/// `NAME:latest`, as everywhere) finds what was kept.
fn keep_target(r: &ImageReference, description: Option<&Document>) -> Result<Keep> {
    let version_tag = || -> Result<Tag> {
        match description.and_then(Document::version) {
            Some(v) => v
                .parse::<Tag>()
                .wrap_err("the description's <version> is not a valid tag"),
            None => Ok(Tag::latest()),
        }
    };
    if let ImageReference::Stash(StashRef { name, tag }) = r {
        let (tag, also) = match tag {
            Some(t) => (t.clone(), Vec::new()),
            None => (version_tag()?, vec![Tag::latest()]),
        };
        return Ok(Keep {
            name: name.clone(),
            tag,
            also,
            copy_to: None,
        });
    }
    let image = match r {
        ImageReference::Oci { image, .. } | ImageReference::OciArchive { image, .. } => image.clone(),
        ImageReference::Docker(rest) => Some(crate::reference::DockerRef::split(rest).image()),
        _ => None,
    };
    let parsed = match image {
        Some(i) => Some(i.parse::<StashRef>().wrap_err_with(|| format!("--keep-root {r}"))?),
        None => None,
    };
    let name = match (&parsed, description.and_then(Document::image_name)) {
        (Some(p), _) => p.name.clone(),
        (None, Some(n)) => n
            .parse::<StashName>()
            .wrap_err("the description's <image name> is not a valid image name")?,
        (None, None) => {
            return Err(eyre!("--keep-root {r} names no image")).suggestion(format!("add a name: {r}:NAME:TAG"))
        }
    };
    let tag = match parsed.and_then(|p| p.tag) {
        Some(t) => t,
        None => version_tag()?,
    };
    Ok(Keep {
        name,
        tag,
        also: Vec::new(),
        copy_to: Some(r.clone()),
    })
}
