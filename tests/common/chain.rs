//! Random root trees and random chains of changes to them, for property
//! tests. A [`Case`] is a first tree (a few ops on a KIWI root that holds
//! only `image/config.xml`) and up to six steps of [`Op`]s; [`run_step`]
//! applies one step to a real directory and returns what it did as shell-like
//! lines, so a failing chain reads as a recipe.
//!
//! Ops pick their targets by index among the entries that exist when they
//! run, so every chain applies to every tree and proptest can shrink a
//! failing chain op by op; an op with nothing to act on does nothing and
//! leaves no line. What a change does to the tree (the times the kernel
//! sets, the setuid bits and `security.capability` that chown and write
//! clear) is not modelled: tests snapshot the real tree.
//!
//! Needs root (device nodes, foreign owners, `security.capability`).
//! Nothing here follows a symlink: parents are real directories found by a
//! walk that does not follow links, and the last component is acted on by
//! calls that do not follow it. That matters: absolute link targets point
//! at the host.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, Permissions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps};
use walkdir::WalkDir;

use super::tree::{escape, Kind, Snapshot};

/// Most entries a tree gets, `image/` and `image/config.xml` included.
pub const MAX_ENTRIES: usize = 30;
/// Names new entries get, the first one free in their directory. `dev`
/// matters at the top (a KIWI root's dev/), `a.c` sorts between `a` and
/// `a/...`, `caf\xe9` is not UTF-8.
const NAMES: [&[u8]; 6] = [b"a", b"b", b"dev", b"a.c", b"c", b"caf\xe9"];
const MODES: [u32; 12] = [
    0o644, 0o755, 0o600, 0o4755, 0o2755, 0o6711, 0o1777, 0o2770, 0o1755, 0o7777, 0o444, 0o000,
];
const OWNERS: [(u32, u32); 5] = [(0, 0), (1234, 5678), (0, 5678), (1234, 0), (65534, 65534)];
const XATTRS: [&[u8]; 4] = [b"user.a", b"user.b", b"user.caf\xe9", b"security.capability"];
const CHAR_DEVICES: [(u32, u32); 4] = [(1, 3), (5, 1), (10, 200), (4095, 1_048_575)];
const BLOCK_DEVICES: [(u32, u32); 3] = [(7, 0), (8, 17), (259, 65_536)];
/// Symlink targets that are not entries: dangling, outside, the link's own directory.
const OTHER_TARGETS: [&str; 4] = ["nowhere", "../nowhere/at/all", "/nonexistent-kiwi-prop", "."];
/// Explicit mtimes are this plus up to 10^8 s (2017 to 2020)...
const EXPLICIT_BASE: i64 = 1_500_000_000;
/// ...whole-second stand-ins for kernel-set times from here (see [`Avoid::nsec`])...
const STAND_IN_BASE: i64 = 1_600_000_000;
/// ...and a time at or after this one was set by the kernel while the test ran.
const KERNEL_TIMES: i64 = 1_700_000_000;

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
    /// One of [`OTHER_TARGETS`].
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
}

impl Avoid {
    /// Every name [`Avoid::parse`] takes.
    pub const NAMES: &'static str =
        "nsec, dev, dirlink, same-mtime, node-links, odd-xattrs, slash-link, newline-xattrs";

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
        2 => (index(), 0u32..100_000_000, nsec()).prop_map(|(victim, secs, nsec)| Op::SetMtime { victim, secs, nsec }),
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

/// Applies the ops of step `step` (0 for the first tree) to `root` and
/// returns what was done, one line per action.
pub fn run_step(root: &Path, ops: &[Op], step: usize, avoid: &Avoid) -> Vec<String> {
    let mut lines = Vec::new();
    for op in ops {
        apply(root, op, avoid, &mut lines);
    }
    if avoid.nsec {
        let stand_in = STAND_IN_BASE + 1000 * step as i64;
        if replace_kernel_times(root, stand_in) > 0 {
            lines.push(format!(
                "(every mtime the kernel set in this step moved to @{stand_in})"
            ));
        }
    }
    lines
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

/// An entry found by [`list`].
struct Item {
    path: Vec<u8>,
    look: Look,
    nlink: u64,
    size: u64,
    xattrs: Vec<Vec<u8>>,
}

impl Item {
    fn is_dir(&self) -> bool {
        matches!(self.look, Look::Dir)
    }

    fn is_symlink(&self) -> bool {
        matches!(self.look, Look::Symlink(_))
    }
}

/// The entries ops may act on (all but `image/` and what is in it), in
/// path order, and how many entries the tree has in all.
struct Listing {
    items: Vec<Item>,
    files: Vec<bool>,
    total: usize,
}

fn list(root: &Path) -> Listing {
    let mut found = Vec::new();
    let mut total = 0;
    for entry in WalkDir::new(root).min_depth(1).follow_links(false) {
        let entry = entry.unwrap_or_else(|e| panic!("walking {}: {e}", root.display()));
        total += 1;
        let path = entry.path().strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
        if path == b"image" || path.starts_with(b"image/") {
            continue;
        }
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        let look = if meta.is_dir() {
            Look::Dir
        } else if meta.file_type().is_symlink() {
            Look::Symlink(
                fs::read_link(entry.path())
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else {
            Look::Other
        };
        let xattrs = xattr::list(entry.path())
            .unwrap()
            .map(|name| name.as_bytes().to_vec())
            .collect();
        let item = Item {
            path,
            look,
            nlink: meta.nlink(),
            size: meta.len(),
            xattrs,
        };
        found.push((item, meta.is_file()));
    }
    found.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    let (items, files) = found.into_iter().unzip();
    Listing { items, files, total }
}

impl Listing {
    /// The `index`th of the items that pass `keep`, if any do.
    fn pick(&self, index: &Index, keep: impl Fn(&Item, bool) -> bool) -> Option<&Item> {
        let fitting: Vec<&Item> = self
            .items
            .iter()
            .zip(&self.files)
            .filter(|(item, &file)| keep(item, file))
            .map(|(item, _)| item)
            .collect();
        (!fitting.is_empty()).then(|| fitting[index.index(fitting.len())])
    }

    /// The `index`th directory, the root (`""`) first.
    fn pick_dir(&self, index: &Index) -> Vec<u8> {
        let dirs: Vec<&[u8]> = std::iter::once(b"".as_slice())
            .chain(self.items.iter().filter(|i| i.is_dir()).map(|i| i.path.as_slice()))
            .collect();
        dirs[index.index(dirs.len())].to_vec()
    }

    fn lookup(&self, path: &[u8]) -> Option<Look> {
        if path.is_empty() {
            return Some(Look::Dir);
        }
        let at = self.items.binary_search_by(|i| i.path.as_slice().cmp(path)).ok()?;
        Some(match &self.items[at].look {
            Look::Dir => Look::Dir,
            Look::Symlink(target) => Look::Symlink(target.clone()),
            Look::Other => Look::Other,
        })
    }
}

fn apply(root: &Path, op: &Op, avoid: &Avoid, lines: &mut Vec<String>) {
    let tree = list(root);
    match op {
        Op::Create { parent, name, new } => {
            let parent = tree.pick_dir(parent);
            if tree.total + new_entries(new) > MAX_ENTRIES {
                return;
            }
            let Some(name) = free_name(root, &parent, name, avoid) else {
                return;
            };
            create(root, &tree, &join(&parent, name), new, avoid, lines);
        }
        Op::Retype { victim, new } => {
            let Some(item) = tree.pick(victim, |_, _| true) else {
                return;
            };
            if tree.total + new_entries(new) - 1 > MAX_ENTRIES {
                return;
            }
            let was_dirlink = item.is_symlink() && leads_to_dir(&|p| tree.lookup(p), &item.path);
            remove(root, item, lines);
            if was_dirlink && matches!(new, New::Dir { .. }) {
                lines.push(format!(
                    "(a symlink to a directory becomes a directory: {})",
                    show(&item.path)
                ));
            }
            create(root, &tree, &item.path, new, avoid, lines);
        }
        Op::Delete { victim } => {
            if let Some(item) = tree.pick(victim, |_, _| true) {
                remove(root, item, lines);
            }
        }
        Op::HardLink { source, parent, name } => {
            let keep = |item: &Item, file: bool| file || (!avoid.node_links && !item.is_dir());
            let Some(source) = tree.pick(source, keep) else { return };
            let parent = tree.pick_dir(parent);
            if tree.total + 1 > MAX_ENTRIES {
                return;
            }
            let Some(name) = free_name(root, &parent, name, avoid) else {
                return;
            };
            let path = join(&parent, name);
            fs::hard_link(abs(root, &source.path), abs(root, &path)).unwrap();
            lines.push(format!("ln {} {}", show(&source.path), show(&path)));
        }
        Op::BreakLink { victim, same_content } => {
            let Some(item) = tree.pick(victim, |item, file| file && item.nlink > 1) else {
                return;
            };
            let path = abs(root, &item.path);
            let mut content = fs::read(&path).unwrap();
            if !same_content {
                content.iter_mut().for_each(|b| *b ^= 0x5a);
            }
            fs::remove_file(&path).unwrap();
            fs::write(&path, &content).unwrap();
            let how = if *same_content { "same content" } else { "new content" };
            lines.push(format!(
                "rm {p}; write {p} ({} bytes, {how}): breaks a hard link",
                content.len(),
                p = show(&item.path)
            ));
        }
        Op::Chmod { victim, mode } => {
            let Some(item) = tree.pick(victim, |item, _| !item.is_symlink()) else {
                return;
            };
            let mode = MODES[mode.index(MODES.len())];
            fs::set_permissions(abs(root, &item.path), Permissions::from_mode(mode)).unwrap();
            lines.push(format!("chmod {mode:04o} {}", show(&item.path)));
        }
        Op::Chown { victim, owner } => {
            let Some(item) = tree.pick(victim, |_, _| true) else {
                return;
            };
            let (uid, gid) = OWNERS[owner.index(OWNERS.len())];
            lchown(abs(root, &item.path), Some(uid), Some(gid)).unwrap();
            lines.push(format!("chown -h {uid}:{gid} {}", show(&item.path)));
        }
        Op::SetXattr { victim, name, seed } => {
            let names: Vec<&[u8]> = XATTRS
                .into_iter()
                .filter(|name| !avoid.odd_xattrs || std::str::from_utf8(name).is_ok())
                .collect();
            let name = names[name.index(names.len())];
            let capability = name == b"security.capability";
            let keep = |item: &Item, file: bool| file || (!capability && item.is_dir());
            let Some(item) = tree.pick(victim, keep) else { return };
            let mut value = if capability {
                capability_value(*seed)
            } else {
                content(usize::from(seed % 4), *seed)
            };
            if avoid.newline_xattrs {
                value.iter_mut().filter(|b| **b == b'\n').for_each(|b| *b = b'.');
            }
            xattr::set(abs(root, &item.path), OsStr::from_bytes(name), &value).unwrap();
            lines.push(format!(
                "setfattr -h -n {} -v {} {}",
                show(name),
                hex(&value),
                show(&item.path)
            ));
        }
        Op::RemoveXattr { victim, which } => {
            let Some(item) = tree.pick(victim, |item, _| !item.xattrs.is_empty()) else {
                return;
            };
            let name = &item.xattrs[which.index(item.xattrs.len())];
            xattr::remove(abs(root, &item.path), OsStr::from_bytes(name)).unwrap();
            lines.push(format!("setfattr -h -x {} {}", show(name), show(&item.path)));
        }
        Op::SetMtime { victim, secs, nsec } => {
            let Some(item) = tree.pick(victim, |_, _| true) else {
                return;
            };
            let nsec = if avoid.nsec { 0 } else { *nsec };
            let secs = EXPLICIT_BASE + i64::from(*secs);
            set_mtime(&abs(root, &item.path), secs, nsec);
            lines.push(format!("touch -h -d @{secs}.{nsec:09} {}", show(&item.path)));
        }
        Op::NsecOnly { victim, nsec } => {
            if avoid.nsec {
                return;
            }
            let Some(item) = tree.pick(victim, |_, _| true) else {
                return;
            };
            let path = abs(root, &item.path);
            let (secs, old) = mtime(&path);
            let nsec = if *nsec == old { (old + 1) % 1_000_000_000 } else { *nsec };
            set_mtime(&path, secs, nsec);
            lines.push(format!(
                "touch -h -d @{secs}.{nsec:09} {} (was @{secs}.{old:09}: only the nanoseconds change)",
                show(&item.path)
            ));
        }
        Op::Rewrite {
            victim,
            seed,
            keep_mtime,
        } => {
            let Some(item) = tree.pick(victim, |item, file| file && item.size > 0) else {
                return;
            };
            let keep_mtime = *keep_mtime && !avoid.same_mtime;
            let path = abs(root, &item.path);
            let before = mtime(&path);
            let mut file = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
            let mut content = Vec::new();
            file.read_to_end(&mut content).unwrap();
            content.iter_mut().for_each(|b| *b ^= seed);
            file.seek(SeekFrom::Start(0)).unwrap();
            file.write_all(&content).unwrap();
            drop(file);
            let p = show(&item.path);
            if keep_mtime {
                set_mtime(&path, before.0, before.1);
                lines.push(format!(
                    "rewrite {p} in place (same {} bytes), then touch -h -d @{}.{:09} {p} (its mtime kept)",
                    content.len(),
                    before.0,
                    before.1
                ));
            } else {
                if mtime(&path) == before {
                    // Within one tick of the kernel's clock: make the change show.
                    set_mtime(&path, before.0, (before.1 + 1) % 1_000_000_000);
                }
                lines.push(format!("rewrite {p} in place (same {} bytes)", content.len()));
            }
        }
    }
}

/// How many entries creating `new` adds.
fn new_entries(new: &New) -> usize {
    match new {
        New::Dir { children } => 1 + usize::from(*children),
        _ => 1,
    }
}

/// The first name of [`NAMES`], from the `index`th on, not taken in `parent`.
fn free_name(root: &Path, parent: &[u8], index: &Index, avoid: &Avoid) -> Option<&'static [u8]> {
    let start = index.index(NAMES.len());
    (0..NAMES.len())
        .map(|n| NAMES[(start + n) % NAMES.len()])
        .filter(|name| !(avoid.dev && parent.is_empty() && *name == b"dev"))
        .find(|name| fs::symlink_metadata(abs(root, &join(parent, name))).is_err())
}

fn remove(root: &Path, item: &Item, lines: &mut Vec<String>) {
    let path = abs(root, &item.path);
    if item.is_dir() {
        // remove_dir_all does not follow symlinks inside.
        fs::remove_dir_all(&path).unwrap();
        lines.push(format!("rm -r {}", show(&item.path)));
    } else {
        fs::remove_file(&path).unwrap();
        lines.push(format!("rm {}", show(&item.path)));
    }
}

/// Creates `new` at `path`; `tree` (listed before any removal) supplies
/// symlink targets, never `path` itself or what was below it.
fn create(root: &Path, tree: &Listing, path: &[u8], new: &New, avoid: &Avoid, lines: &mut Vec<String>) {
    let at = abs(root, path);
    let p = show(path);
    match new {
        New::File { len, seed } => {
            let bytes = content(usize::from(*len), *seed);
            fs::write(&at, &bytes).unwrap();
            lines.push(format!("write {p} ({} bytes)", bytes.len()));
        }
        New::Dir { children } => {
            fs::create_dir(&at).unwrap();
            lines.push(format!("mkdir {p}"));
            for (n, name) in NAMES.iter().take(usize::from(*children)).enumerate() {
                let child = join(path, name);
                let bytes = content(3 + n, n as u8);
                fs::write(abs(root, &child), &bytes).unwrap();
                lines.push(format!("write {} ({} bytes)", show(&child), bytes.len()));
            }
        }
        New::Symlink(target) => {
            let target = link_target(tree, path, target, avoid);
            symlink(OsStr::from_bytes(&target), &at).unwrap();
            lines.push(format!("ln -s {} {p}", show(&target)));
        }
        New::Node(node) => {
            let (kind, (major, minor), shown) = match node {
                Node::Fifo => (FileType::Fifo, (0, 0), "mkfifo".to_string()),
                Node::Char(i) => {
                    let dev = CHAR_DEVICES[i.index(CHAR_DEVICES.len())];
                    (FileType::CharacterDevice, dev, format!("mknod c {} {}", dev.0, dev.1))
                }
                Node::Block(i) => {
                    let dev = BLOCK_DEVICES[i.index(BLOCK_DEVICES.len())];
                    (FileType::BlockDevice, dev, format!("mknod b {} {}", dev.0, dev.1))
                }
            };
            let dev = rustix::fs::makedev(major, minor);
            rustix::fs::mknodat(rustix::fs::CWD, &at, kind, Mode::from_raw_mode(0o644), dev)
                .unwrap_or_else(|e| panic!("{shown} {}: {e}", at.display()));
            lines.push(format!("{shown} {p}"));
        }
    }
}

fn link_target(tree: &Listing, link: &[u8], target: &Target, avoid: &Avoid) -> Vec<u8> {
    let inside = |p: &[u8]| p == link || (p.starts_with(link) && p.get(link.len()) == Some(&b'/'));
    let dirs = || {
        std::iter::once(b"".as_slice())
            .chain(tree.items.iter().filter(|i| i.is_dir()).map(|i| i.path.as_slice()))
            .filter(|p| !inside(p))
            .collect::<Vec<_>>()
    };
    match target {
        Target::Dir(i) => {
            let dirs = dirs();
            relative(parent_of(link), dirs[i.index(dirs.len())])
        }
        Target::AbsoluteDir(i) => {
            let mut dirs = dirs();
            if avoid.slash_link {
                dirs.retain(|dir| !dir.is_empty());
            }
            match dirs.is_empty() {
                true => b"/nonexistent-kiwi-prop".to_vec(),
                false => [b"/".as_slice(), dirs[i.index(dirs.len())]].concat(),
            }
        }
        Target::Entry(i) => {
            let entries: Vec<&[u8]> = tree
                .items
                .iter()
                .map(|item| item.path.as_slice())
                .filter(|p| !inside(p))
                .collect();
            if entries.is_empty() {
                return OTHER_TARGETS[0].as_bytes().to_vec();
            }
            relative(parent_of(link), entries[i.index(entries.len())])
        }
        Target::Other(i) => OTHER_TARGETS[i.index(OTHER_TARGETS.len())].as_bytes().to_vec(),
    }
}

/// The path from directory `from` to `to` (both relative to the root).
fn relative(from: &[u8], to: &[u8]) -> Vec<u8> {
    let ups = components(from).len();
    let mut parts: Vec<&[u8]> = vec![b".."; ups];
    if !to.is_empty() {
        parts.push(to);
    }
    if parts.is_empty() {
        return b".".to_vec();
    }
    parts.join(&b'/')
}

/// Moves every mtime at or after [`KERNEL_TIMES`] to `stand_in`; how many.
fn replace_kernel_times(root: &Path, stand_in: i64) -> usize {
    let mut moved = 0;
    for entry in WalkDir::new(root).min_depth(1).follow_links(false) {
        let path = entry.unwrap().into_path();
        if mtime(&path).0 >= KERNEL_TIMES {
            set_mtime(&path, stand_in, 0);
            moved += 1;
        }
    }
    moved
}

fn mtime(path: &Path) -> (i64, u32) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.mtime(), meta.mtime_nsec() as u32)
}

/// Sets atime and mtime of `path` itself, not of a symlink's target.
fn set_mtime(path: &Path, secs: i64, nsec: u32) {
    let time = Timespec {
        tv_sec: secs,
        tv_nsec: i64::from(nsec),
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", path.display()));
}

/// `len` bytes made from `seed` (xorshift), the same for the same arguments.
fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// `security.capability` (`struct vfs_cap_data`, revision 2) permitting one
/// capability, effective when `seed` is odd.
fn capability_value(seed: u8) -> Vec<u8> {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    let effective = u32::from(seed & 1);
    let permitted = 1u32 << (seed % 32);
    [VFS_CAP_REVISION_2 | effective, permitted, 0, 0, 0]
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "\"\"".to_string();
    }
    let mut shown = "0x".to_string();
    for byte in bytes {
        write!(shown, "{byte:02x}").unwrap();
    }
    shown
}

/// A path or name as typed in a shell: bare when plain, else quoted with escapes.
pub fn show(bytes: &[u8]) -> String {
    let plain = bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"._-/@:".contains(b));
    if plain && !bytes.is_empty() {
        String::from_utf8(bytes.to_vec()).unwrap()
    } else {
        escape(bytes)
    }
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

fn parent_of(path: &[u8]) -> &[u8] {
    path.iter()
        .rposition(|&b| b == b'/')
        .map_or(b"".as_slice(), |i| &path[..i])
}

fn abs(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}
