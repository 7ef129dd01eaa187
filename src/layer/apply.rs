//! What a layer's changes do to a tree: the one place that decides it, for
//! the root on disk and for trees in memory alike.
//!
//! The rules are umoci's (`raw unpack --keep-dirlinks`), which follow the
//! OCI image spec:
//! - an entry's parent path is resolved inside the root: symlinks are
//!   followed, absolute ones from the root, and `..` never climbs above it;
//!   missing parents are created (0755);
//! - an entry replaces what is at its path, except that a directory keeps an
//!   existing directory (its metadata replaced) and an existing symlink that
//!   resolves to a directory (keep-dirlinks: the link gets the entry's owner
//!   and times, and later entries go through it);
//! - a whiteout removes what lower layers have at its path, an opaque marker
//!   what they have inside its directory; what the same layer wrote stays,
//!   and a whiteout of a path that does not exist does nothing;
//! - a hard link's target is resolved like a parent, its last component not
//!   followed.
//!
//! Where umoci would resolve a dangling symlink's `..` lexically, this
//! resolver creates the missing directory and goes on inside the root: it
//! never leaves it.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use color_eyre::eyre::{bail, eyre, Result};

use super::read::{self, Change};
use super::{join, show, split, Kind, Meta, StackedLayer};

/// What is at a path, as far as resolving paths needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A symlink and its target.
    Symlink(Vec<u8>),
    /// Anything else.
    Other,
}

/// A tree that layers are applied to. Every path handed to it is clean,
/// relative to the root, and no component of it but the last is a symlink:
/// the applier has resolved it.
pub trait Target {
    /// What is at `path`, not following a last symlink.
    fn node(&mut self, path: &[u8]) -> Result<Option<Node>>;
    /// The names in the directory `dir`.
    fn children(&mut self, dir: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Removes what is at `path`, a whole directory tree included.
    fn remove(&mut self, path: &[u8]) -> Result<()>;
    /// Creates the missing directory `path` (0755, owned by root).
    fn mkdir(&mut self, path: &[u8]) -> Result<()>;
    /// Creates the entry `path` (not a directory; nothing is there) with its
    /// metadata; a regular file's content comes from `content`.
    fn put(&mut self, path: &[u8], meta: &Meta, content: &mut dyn Read) -> Result<()>;
    /// Makes `path` a directory with `meta` (creating it unless `exists`).
    fn set_dir(&mut self, path: &[u8], meta: &Meta, exists: bool) -> Result<()>;
    /// Makes `path` (free) a second name of the entry at `target`.
    fn link(&mut self, path: &[u8], target: &[u8]) -> Result<()>;
    /// Gives the symlink `path`, kept in place of a directory entry, that
    /// entry's owner and times.
    fn keep_dirlink(&mut self, path: &[u8], meta: &Meta) -> Result<()>;
    /// Finishes what the target still does in the background for the
    /// changes it was handed.
    fn settle(&mut self) -> Result<()> {
        Ok(())
    }
}

/// How many symlinks one path may go through (as securejoin allows).
const MAX_LINKS: usize = 255;

/// Applies layers, one after another, to a [`Target`].
pub struct Applier<'t, T: Target> {
    target: &'t mut T,
    /// Directory paths as entries name them, resolved; cleared whenever a
    /// directory or symlink goes away.
    resolved: HashMap<Vec<u8>, Vec<u8>>,
    /// Paths the current layer wrote, and their ancestors: its whiteouts do
    /// not remove them.
    upper: HashSet<Vec<u8>>,
    /// Set when the caller's whiteouts all come before its entries, so that
    /// `upper` is always empty when one comes and need not be kept.
    whiteouts_first: bool,
    /// Whether the current layer wrote anything yet.
    wrote: bool,
    /// Set when a whiteout came after an entry with `whiteouts_first`.
    late_whiteout: bool,
}

/// Applies `layers`, lowest first, to `target`, each blob verified. `keep`
/// may leave changes out (and refuse some); it sees every change first.
pub fn apply_layers<T: Target>(
    layers: &[StackedLayer],
    target: &mut T,
    keep: &mut dyn FnMut(&Change) -> Result<bool>,
) -> Result<()> {
    Applier::new(target).apply_layers(layers, keep)
}

impl<'t, T: Target> Applier<'t, T> {
    /// An applier on `target`.
    pub fn new(target: &'t mut T) -> Self {
        Applier {
            target,
            resolved: HashMap::new(),
            upper: HashSet::new(),
            whiteouts_first: false,
            wrote: false,
            late_whiteout: false,
        }
    }

    /// Applies `layers`, lowest first, each blob verified. `keep` may leave
    /// changes out (and refuse some); it sees every change first.
    pub fn apply_layers(
        &mut self,
        layers: &[StackedLayer],
        keep: &mut dyn FnMut(&Change) -> Result<bool>,
    ) -> Result<()> {
        for l in layers {
            self.start_layer();
            read::read(l, &mut |change, content| match keep(&change)? {
                true => self.apply(&change, content),
                false => Ok(()),
            })?;
            // What the target still has in flight belongs to this layer.
            self.target
                .settle()
                .map_err(|e| eyre!("layer {}: {e:#}", l.layer.digest()))?;
        }
        Ok(())
    }

    /// Whether a whiteout came after an entry of its layer, which an applier
    /// made with [`Applier::whiteouts_first`] refuses.
    pub fn saw_late_whiteout(&self) -> bool {
        self.late_whiteout
    }

    /// An applier for changes whose whiteouts and opaque markers all come
    /// before any entry (as the layers we write have them): it keeps no set
    /// of what the layer wrote, and refuses a whiteout after an entry.
    pub fn whiteouts_first(mut self) -> Self {
        self.whiteouts_first = true;
        self
    }

    /// Starts a new layer: what earlier layers wrote is now lower.
    pub fn start_layer(&mut self) {
        self.upper.clear();
        self.wrote = false;
    }

    /// Applies one change.
    pub fn apply(&mut self, change: &Change, content: &mut dyn Read) -> Result<()> {
        let removes = matches!(change, Change::Whiteout(_) | Change::Opaque(_));
        if self.whiteouts_first && removes && self.wrote {
            self.late_whiteout = true;
            bail!("a whiteout after an entry of the same layer");
        }
        self.wrote |= !removes;
        match change {
            Change::Put { path, meta } => self.put(path, meta, content),
            Change::Link { path, target } => self.link(path, target),
            Change::Whiteout(path) => {
                let (dir, name) = split(path);
                let Some(dir) = self.resolve(dir, false)? else {
                    return Ok(());
                };
                let victim = join(&dir, name);
                if self.target.node(&victim)?.is_some() {
                    self.remove_lower(&victim, false)?;
                }
                Ok(())
            }
            Change::Opaque(dir) => match self.resolve(dir, false)? {
                Some(dir) => self.remove_lower(&dir, true),
                None => Ok(()),
            },
        }
    }

    fn put(&mut self, path: &[u8], meta: &Meta, content: &mut dyn Read) -> Result<()> {
        if path.is_empty() {
            return self.target.set_dir(path, meta, true);
        }
        let (dir, name) = split(path);
        let dir = self.resolve(dir, true)?.expect("created parents resolve");
        let at = join(&dir, name);
        let existing = self.target.node(&at)?;
        if meta.kind == Kind::Dir {
            match existing {
                Some(Node::Dir) => self.target.set_dir(&at, meta, true)?,
                // A link that loops is no directory link: it is replaced.
                Some(Node::Symlink(_)) if self.resolve(&at, false).is_ok_and(|r| r.is_some()) => {
                    self.target.keep_dirlink(&at, meta)?
                }
                Some(node) => {
                    self.remove(&at, &node)?;
                    self.target.set_dir(&at, meta, false)?;
                }
                None => self.target.set_dir(&at, meta, false)?,
            }
        } else {
            if let Some(node) = existing {
                self.remove(&at, &node)?;
            }
            self.target.put(&at, meta, content)?;
        }
        self.mark_upper(&at);
        Ok(())
    }

    fn link(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
        let missing = || eyre!("its hard link target {} does not exist", show(target));
        let (tdir, tname) = split(target);
        let tdir = self.resolve(tdir, false)?.ok_or_else(missing)?;
        let target = join(&tdir, tname);
        if self.target.node(&target)?.is_none() {
            return Err(missing());
        }
        let (dir, name) = split(path);
        let dir = self.resolve(dir, true)?.expect("created parents resolve");
        let at = join(&dir, name);
        if at == target {
            bail!("it is a hard link to itself");
        }
        if let Some(node) = self.target.node(&at)? {
            self.remove(&at, &node)?;
        }
        self.target.link(&at, &target)?;
        self.mark_upper(&at);
        Ok(())
    }

    /// Removes what lower layers have at `path` (inside it only, for an
    /// opaque marker), sparing what this layer wrote.
    fn remove_lower(&mut self, path: &[u8], inside_only: bool) -> Result<()> {
        let node = self.target.node(path)?;
        let Some(node) = node else { return Ok(()) };
        if !inside_only && !self.upper.contains(path) {
            return self.remove(path, &node);
        }
        if node == Node::Dir {
            for child in self.target.children(path)? {
                self.remove_lower(&join(path, &child), false)?;
            }
        }
        Ok(())
    }

    fn remove(&mut self, path: &[u8], node: &Node) -> Result<()> {
        self.target.remove(path)?;
        if *node != Node::Other {
            self.resolved.clear();
        }
        Ok(())
    }

    fn mark_upper(&mut self, path: &[u8]) {
        if self.whiteouts_first {
            return;
        }
        let mut p = path;
        loop {
            if !self.upper.insert(p.to_vec()) {
                break;
            }
            if p.is_empty() {
                break;
            }
            p = split(p).0;
        }
    }

    /// The directory `dir` (an entry's path) resolved inside the root: a
    /// path whose every component is a directory. Missing directories are
    /// created when `create`, else the answer is `None`, as it is when a
    /// component is not a directory and nothing is created.
    fn resolve(&mut self, dir: &[u8], create: bool) -> Result<Option<Vec<u8>>> {
        if let Some(done) = self.resolved.get(dir) {
            return Ok(Some(done.clone()));
        }
        // Components still to walk, the next one last.
        let mut todo: Vec<Vec<u8>> = dir.split(|&b| b == b'/').rev().map(<[u8]>::to_vec).collect();
        let mut at: Vec<u8> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    at.truncate(split(&at).0.len());
                    continue;
                }
                _ => {}
            }
            let next = join(&at, &c);
            match self.target.node(&next)? {
                Some(Node::Dir) => at = next,
                Some(Node::Symlink(target)) => {
                    links += 1;
                    if links > MAX_LINKS {
                        bail!("resolving {} goes through too many symlinks", show(dir));
                    }
                    if target.starts_with(b"/") {
                        at.clear();
                    }
                    todo.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
                }
                Some(Node::Other) if create => bail!("{} is not a directory", show(&next)),
                Some(Node::Other) => return Ok(None),
                None if create => {
                    self.target.mkdir(&next)?;
                    at = next;
                }
                None => return Ok(None),
            }
        }
        self.resolved.insert(dir.to_vec(), at.clone());
        Ok(Some(at))
    }
}
