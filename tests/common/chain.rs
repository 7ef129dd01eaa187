//! Random root trees and random chains of changes to them, for property
//! tests. A [`Case`] is a first tree (a few ops on a KIWI root that holds
//! only `image/config.xml`) and up to six steps of [`Op`]s; [`run_step`]
//! applies one step to a real directory and returns the [`Change`]s it
//! made with one shell-like line each, so a failing chain reads as a recipe.
//!
//! Ops pick their targets by index among the entries that exist when they
//! run (pick.rs), so every chain applies to every tree and proptest can
//! shrink a failing chain op by op; an op with nothing to act on does
//! nothing and leaves no line. The changes they made have their targets
//! fixed: [`replay_step`] makes them again, leaving out those that no longer
//! fit, which is how a test takes a failing chain apart further (change.rs).
//! What a change does to the tree (the times the kernel sets, the setuid
//! bits and `security.capability` that chown and write clear) is not
//! modelled: tests snapshot the real tree.
//!
//! Needs root (device nodes, foreign owners, `security.capability`).
//! Nothing here follows a symlink: parents are real directories found by a
//! walk that does not follow links, and the last component is acted on by
//! calls that do not follow it. That matters: absolute link targets point
//! at the host.

pub mod change;
mod pick;

use std::fs;
use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::tree::{Kind, Snapshot};
use change::{execute, parent_of, replace_kernel_times, Change};
use pick::resolve;

/// Whole-second stand-ins for the times the kernel sets start here (2020),
/// 1000 s apart per step (see [`Avoid::nsec`]).
const STAND_IN_BASE: i64 = 1_600_000_000;

/// The first tree and the steps after it.
#[derive(Debug, Clone)]
pub struct Case {
    /// Applied to a root holding only `image/config.xml`: the first stash.
    pub first: Vec<Op>,
    /// One stash after each step.
    pub steps: Vec<Vec<Op>>,
}

impl Case {
    /// The first tree's ops, then each step's.
    pub fn all_steps(&self) -> Vec<&[Op]> {
        std::iter::once(self.first.as_slice())
            .chain(self.steps.iter().map(Vec::as_slice))
            .collect()
    }
}

/// One change. Each `Index` picks among the entries that fit when it runs.
#[derive(Debug, Clone)]
pub enum Op {
    /// A new entry in a directory.
    Create { parent: Index, name: Index, new: New },
    /// An entry replaced by one of another (or the same) kind.
    Retype { victim: Index, new: New },
    /// An entry removed, a directory with everything in it.
    Delete { victim: Index },
    /// A second name for a non-directory.
    HardLink { source: Index, parent: Index, name: Index },
    /// One name of a hard-linked file replaced by a new file.
    BreakLink { victim: Index, same_content: bool },
    /// chmod of a non-symlink.
    Chmod { victim: Index, mode: Index },
    /// lchown.
    Chown { victim: Index, owner: Index },
    /// An xattr added or changed (`user.*` on files and directories,
    /// `security.capability` on files).
    SetXattr { victim: Index, name: Index, seed: u8 },
    /// An xattr removed.
    RemoveXattr { victim: Index, which: Index },
    /// mtime set, without following symlinks, to the nanosecond.
    SetMtime { victim: Index, secs: u32, nsec: u32 },
    /// Only the nanoseconds of an mtime changed.
    NsecOnly { victim: Index, nsec: u32 },
    /// A file's content changed in place, same size (all its names see it),
    /// with the mtime the write gives or, with `keep_mtime`, the old one
    /// put back (as `cp -p` or rpm do).
    Rewrite { victim: Index, seed: u8, keep_mtime: bool },
}

/// What a new entry is.
#[derive(Debug, Clone)]
pub enum New {
    /// A file of `len` bytes made from `seed`.
    File { len: u16, seed: u8 },
    /// A directory with this many small files in it.
    Dir { children: u8 },
    /// A symlink.
    Symlink(Target),
    /// A fifo or a device node.
    Node(Node),
}

/// Where a new symlink points.
#[derive(Debug, Clone)]
pub enum Target {
    /// A directory (the root included), by a relative path.
    Dir(Index),
    /// Any entry, by a relative path.
    Entry(Index),
    /// A directory by an absolute path (resolved inside the root by an unpacker).
    AbsoluteDir(Index),
    /// A dangling or outside target, or `.` (pick.rs, `OTHER_TARGETS`).
    Other(Index),
}

/// A fifo or a device node.
#[derive(Debug, Clone)]
pub enum Node {
    Fifo,
    Char(Index),
    Block(Index),
}

/// Changes a run leaves out, to look past a known product bug. All false
/// by default: everything is generated.
#[derive(Debug, Clone, Copy, Default)]
pub struct Avoid {
    /// `nsec`: every mtime whole seconds: no nanoseconds in explicit times,
    /// no nanosecond-only changes, and each time the kernel set during a
    /// step replaced by a whole second of that step's own.
    pub nsec: bool,
    /// `dev`: no top-level `dev`.
    pub dev: bool,
    /// `dirlink`: no case where a symlink to a directory becomes a directory
    /// (the test rejects such cases; see [`dirlink_became_dir`]).
    pub dirlink: bool,
    /// `same-mtime`: no content change that keeps size and mtime.
    pub same_mtime: bool,
    /// `node-links`: hard links only between regular files.
    pub node_links: bool,
    /// `odd-xattrs`: no xattr names that are not UTF-8.
    pub odd_xattrs: bool,
    /// `slash-link`: no symlink to `/`.
    pub slash_link: bool,
    /// `newline-xattrs`: no newline in xattr values.
    pub newline_xattrs: bool,
    /// `dir-xattrs`: no xattrs on directories.
    pub dir_xattrs: bool,
}

impl Avoid {
    /// Every name [`Avoid::parse`] takes.
    pub const NAMES: &'static str =
        "nsec, dev, dirlink, same-mtime, node-links, odd-xattrs, slash-link, newline-xattrs, dir-xattrs";

    /// A comma-separated list of the names in [`Avoid::NAMES`].
    pub fn parse(list: &str) -> Result<Avoid, String> {
        let mut avoid = Avoid::default();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "nsec" => avoid.nsec = true,
                "dev" => avoid.dev = true,
                "dirlink" => avoid.dirlink = true,
                "same-mtime" => avoid.same_mtime = true,
                "node-links" => avoid.node_links = true,
                "odd-xattrs" => avoid.odd_xattrs = true,
                "slash-link" => avoid.slash_link = true,
                "newline-xattrs" => avoid.newline_xattrs = true,
                "dir-xattrs" => avoid.dir_xattrs = true,
                other => return Err(format!("{other:?} is none of {}", Avoid::NAMES)),
            }
        }
        Ok(avoid)
    }
}

/// Cases: up to 12 ops for the first tree (none: only image/config.xml), up to 6 steps of 1 to 3 ops.
pub fn case() -> impl Strategy<Value = Case> {
    (vec(first_op(), 0..=12), vec(vec(op(), 1..=3), 0..=6)).prop_map(|(first, steps)| Case { first, steps })
}

fn first_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => create_op(),
        1 => hard_link(),
        3 => op(),
    ]
}

fn create_op() -> impl Strategy<Value = Op> {
    (any::<Index>(), any::<Index>(), new()).prop_map(|(parent, name, new)| Op::Create { parent, name, new })
}

fn hard_link() -> impl Strategy<Value = Op> {
    (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(source, parent, name)| Op::HardLink {
        source,
        parent,
        name,
    })
}

/// Any op, simplest first (proptest shrinks towards earlier choices).
pub fn op() -> impl Strategy<Value = Op> {
    let index = any::<Index>;
    prop_oneof![
        4 => create_op(),
        2 => index().prop_map(|victim| Op::Delete { victim }),
        4 => (index(), new()).prop_map(|(victim, new)| Op::Retype { victim, new }),
        2 => hard_link(),
        1 => (index(), any::<bool>()).prop_map(|(victim, same_content)| Op::BreakLink { victim, same_content }),
        2 => (index(), index()).prop_map(|(victim, mode)| Op::Chmod { victim, mode }),
        2 => (index(), index()).prop_map(|(victim, owner)| Op::Chown { victim, owner }),
        2 => (index(), index(), any::<u8>()).prop_map(|(victim, name, seed)| Op::SetXattr { victim, name, seed }),
        1 => (index(), index()).prop_map(|(victim, which)| Op::RemoveXattr { victim, which }),
        2 => (index(), 0u32..10_000_000, nsec()).prop_map(|(victim, secs, nsec)| Op::SetMtime { victim, secs, nsec }),
        1 => (index(), 1u32..1_000_000_000).prop_map(|(victim, nsec)| Op::NsecOnly { victim, nsec }),
        2 => (index(), 1u8..=255, any::<bool>())
            .prop_map(|(victim, seed, keep_mtime)| Op::Rewrite { victim, seed, keep_mtime }),
    ]
}

fn nsec() -> impl Strategy<Value = u32> {
    prop_oneof![1 => Just(0u32), 3 => 1u32..1_000_000_000]
}

fn new() -> impl Strategy<Value = New> {
    let index = any::<Index>;
    prop_oneof![
        3 => (prop_oneof![4 => 0u16..=40, 1 => 500u16..=1100], any::<u8>())
            .prop_map(|(len, seed)| New::File { len, seed }),
        2 => (0u8..=2).prop_map(|children| New::Dir { children }),
        3 => prop_oneof![
            index().prop_map(Target::Dir),
            index().prop_map(Target::Entry),
            index().prop_map(Target::AbsoluteDir),
            index().prop_map(Target::Other),
        ]
        .prop_map(New::Symlink),
        1 => prop_oneof![
            Just(Node::Fifo),
            index().prop_map(Node::Char),
            index().prop_map(Node::Block),
        ]
        .prop_map(New::Node),
    ]
}

/// Makes `root` a minimal KIWI root: `image/config.xml`, nothing else.
pub fn make_root(root: &Path) {
    fs::create_dir_all(root.join("image")).unwrap();
    fs::write(root.join("image/config.xml"), KIWI_CONFIG).unwrap();
}

const KIWI_CONFIG: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="prop-tree">
    <description type="system">
        <author>kiwi-stackbuild tests</author>
        <contact>tests@example.invalid</contact>
        <specification>random tree of a property test</specification>
    </description>
    <preferences>
        <version>1.0.0</version>
        <packagemanager>zypper</packagemanager>
        <type image="tbz"/>
    </preferences>
</image>
"#;

/// What one step did: the changes made, in order, and one line for each
/// (and a last line when [`Avoid::nsec`] moved times).
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// The changes made; [`replay_step`] makes them again.
    pub changes: Vec<Change>,
    /// What was done, shell-like.
    pub lines: Vec<String>,
}

/// Applies the ops of step `step` (0 for the first tree) to `root`: each op
/// picks its targets in the tree as it is when the op runs.
pub fn run_step(root: &Path, ops: &[Op], step: usize, avoid: &Avoid) -> Step {
    let mut done = Step::default();
    for op in ops {
        for change in resolve(root, op, step, avoid) {
            make(root, change, avoid, &mut done);
        }
    }
    finish_step(root, step, avoid, &mut done);
    done
}

/// Makes `changes` (from [`run_step`], maybe fewer) again; a change that no
/// longer fits the tree (its target gone or of another kind) is left out.
pub fn replay_step(root: &Path, changes: &[Change], step: usize, avoid: &Avoid) -> Step {
    let mut done = Step::default();
    for change in changes {
        make(root, change.clone(), avoid, &mut done);
    }
    finish_step(root, step, avoid, &mut done);
    done
}

fn make(root: &Path, change: Change, avoid: &Avoid, done: &mut Step) {
    if let Some(line) = execute(root, &change, avoid) {
        done.lines.push(line);
        done.changes.push(change);
    }
}

fn finish_step(root: &Path, step: usize, avoid: &Avoid, done: &mut Step) {
    if avoid.nsec {
        let stand_in = STAND_IN_BASE + 1000 * step as i64;
        if replace_kernel_times(root, stand_in) > 0 {
            done.lines.push(format!(
                "(every mtime the kernel set in this step moved to @{stand_in})"
            ));
        }
    }
}

/// Whether some path is a directory in `after` and was a symlink in
/// `before` that led to a directory, resolved inside the root.
pub fn dirlink_became_dir(before: &Snapshot, after: &Snapshot) -> Option<Vec<u8>> {
    let lookup = |path: &[u8]| {
        before.get(path).map(|entry| match &entry.kind {
            Kind::Dir => Look::Dir,
            Kind::Symlink { target } => Look::Symlink(target.clone()),
            _ => Look::Other,
        })
    };
    after
        .iter()
        .filter(|(_, entry)| entry.kind == Kind::Dir)
        .map(|(path, _)| path)
        .find(|path| leads_to_dir(&lookup, path))
        .cloned()
}

/// Every path whose type differs between two snapshots, as `"file -> dir"`,
/// a symlink to a directory told apart from other symlinks.
pub fn type_changes(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let lookup = |path: &[u8]| {
        before.get(path).map(|entry| match &entry.kind {
            Kind::Dir => Look::Dir,
            Kind::Symlink { target } => Look::Symlink(target.clone()),
            _ => Look::Other,
        })
    };
    let class = |path: &[u8], kind: &Kind, old: bool| match kind {
        Kind::Dir => "dir",
        Kind::File { .. } => "file",
        Kind::Symlink { .. } if old && leads_to_dir(&lookup, path) => "dirlink",
        Kind::Symlink { .. } => "symlink",
        Kind::Fifo | Kind::Socket => "fifo",
        Kind::CharDevice { .. } | Kind::BlockDevice { .. } => "device",
    };
    after
        .iter()
        .filter_map(|(path, new)| {
            let old = before.get(path)?;
            let (from, to) = (class(path, &old.kind, true), class(path, &new.kind, false));
            (from != to && !(from == "dirlink" && to == "symlink")).then(|| format!("{from} -> {to}"))
        })
        .collect()
}

/// What a path is, as far as resolving symlinks goes.
enum Look {
    Dir,
    Symlink(Vec<u8>),
    Other,
}

/// Whether `link` is a symlink whose target, resolved inside the root (an
/// absolute target from the root, `..` stopping at it), is a directory.
fn leads_to_dir(lookup: &dyn Fn(&[u8]) -> Option<Look>, link: &[u8]) -> bool {
    let Some(Look::Symlink(target)) = lookup(link) else {
        return false;
    };
    let mut at: Vec<Vec<u8>> = components(parent_of(link));
    let mut pending: Vec<Vec<u8>> = Vec::new(); // reversed: next component last
    push_target(&mut at, &mut pending, &target);
    let mut hops = 0;
    while let Some(component) = pending.pop() {
        match component.as_slice() {
            b"" | b"." => {}
            b".." => {
                at.pop();
            }
            name => {
                at.push(name.to_vec());
                match lookup(&at.join(&b'/')) {
                    Some(Look::Dir) => {}
                    Some(Look::Symlink(target)) if hops < 40 => {
                        hops += 1;
                        at.pop();
                        push_target(&mut at, &mut pending, &target);
                    }
                    _ => return false,
                }
            }
        }
    }
    true
}

fn push_target(at: &mut Vec<Vec<u8>>, pending: &mut Vec<Vec<u8>>, target: &[u8]) {
    if target.starts_with(b"/") {
        at.clear();
    }
    pending.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
}

fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}
