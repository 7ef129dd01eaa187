//! Ops resolved against the tree as it is: which entries they act on,
//! which names and link targets new entries get.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use proptest::sample::Index;
use walkdir::WalkDir;

use super::change::{capability_value, content, join, parent_of, protected, xattr_fits, Change, NodeKind};
use super::{components, Avoid, Look, New, Node, Op, Target};

/// Names new entries get, the first one free in their directory. `dev`
/// matters at the top (a KIWI root's dev/), `a.c` sorts between `a` and
/// `a/...`, `caf\xe9` is not UTF-8, the last one is longer than a tar
/// header's 100-byte name field.
const NAMES: [&[u8]; 7] = [b"a", b"b", b"dev", b"a.c", b"c", b"caf\xe9", LONG_NAME];

const LONG_NAME: &[u8] =
    b"long-name-long-name-long-name-long-name-long-name-long-name-long-name-long-name-long-name-long-name-long";

const MODES: [u32; 12] = [
    0o644, 0o755, 0o600, 0o4755, 0o2755, 0o6711, 0o1777, 0o2770, 0o1755, 0o7777, 0o444, 0o000,
];

/// Owners; the last one is beyond the 7 octal digits of a tar header.
const OWNERS: [(u32, u32); 6] = [
    (0, 0),
    (1234, 5678),
    (0, 5678),
    (1234, 0),
    (65534, 65534),
    (3_000_000, 4_000_000),
];

const XATTRS: [&[u8]; 4] = [b"user.a", b"user.b", b"user.caf\xe9", b"security.capability"];

const CHAR_DEVICES: [(u32, u32); 4] = [(1, 3), (5, 1), (10, 200), (4095, 1_048_575)];

const BLOCK_DEVICES: [(u32, u32); 3] = [(7, 0), (8, 17), (259, 65_536)];

/// Symlink targets that are not entries: dangling, outside, the link's own directory.
const OTHER_TARGETS: [&str; 4] = ["nowhere", "../nowhere/at/all", "/nonexistent-kiwi-prop", "."];

/// Explicit mtimes are this plus 10^7 s per step plus up to 10^7 s (2017
/// to 2019): two steps never set the same time, so no content change hides
/// behind an mtime set back to what it was by chance (or by shrinking,
/// which drives times to their smallest value).
const EXPLICIT_BASE: i64 = 1_500_000_000;
const EXPLICIT_STEP: i64 = 10_000_000;

/// An entry found by [`list`].
struct Item {
    path: Vec<u8>,
    look: Look,
    /// A regular file.
    file: bool,
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

/// The entries ops may act on: all but `image/` and what is in it, in path order.
struct Listing {
    items: Vec<Item>,
}

fn list(root: &Path) -> Listing {
    let mut items = Vec::new();
    for entry in WalkDir::new(root).min_depth(1).follow_links(false) {
        let entry = entry.unwrap_or_else(|e| panic!("walking {}: {e}", root.display()));
        let path = entry.path().strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
        if protected(&path) {
            continue;
        }
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        items.push(Item {
            path,
            look: look_of(entry.path(), &meta),
            file: meta.is_file(),
            nlink: meta.nlink(),
            size: meta.len(),
            xattrs: xattr::list(entry.path())
                .unwrap()
                .map(|name| name.as_bytes().to_vec())
                .collect(),
        });
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    Listing { items }
}

fn look_of(path: &Path, meta: &fs::Metadata) -> Look {
    if meta.is_dir() {
        Look::Dir
    } else if meta.file_type().is_symlink() {
        Look::Symlink(fs::read_link(path).unwrap().into_os_string().into_encoded_bytes())
    } else {
        Look::Other
    }
}

impl Listing {
    /// The `index`th of the items that pass `keep`, if any do.
    fn pick(&self, index: &Index, keep: impl Fn(&Item) -> bool) -> Option<&Item> {
        let fitting: Vec<&Item> = self.items.iter().filter(|item| keep(item)).collect();
        (!fitting.is_empty()).then(|| fitting[index.index(fitting.len())])
    }

    /// The directories, the root (`""`) first.
    fn dirs(&self) -> Vec<&[u8]> {
        std::iter::once(b"".as_slice())
            .chain(self.items.iter().filter(|i| i.is_dir()).map(|i| i.path.as_slice()))
            .collect()
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

/// The changes `op` makes to the tree at `root` as it is now.
pub(super) fn resolve(root: &Path, op: &Op, step: usize, avoid: &Avoid) -> Vec<Change> {
    let tree = list(root);
    let mut changes = Vec::new();
    match op {
        Op::Create { parent, name, new } => {
            let dirs = tree.dirs();
            let parent = dirs[parent.index(dirs.len())];
            if let Some(name) = free_name(&tree, parent, name, avoid) {
                creation(&tree, &join(parent, name), new, avoid, &mut changes);
            }
        }
        Op::Retype { victim, new } => {
            if let Some(item) = tree.pick(victim, |_| true) {
                changes.push(Change::Remove {
                    path: item.path.clone(),
                });
                creation(&tree, &item.path, new, avoid, &mut changes);
            }
        }
        Op::Delete { victim } => {
            if let Some(item) = tree.pick(victim, |_| true) {
                changes.push(Change::Remove {
                    path: item.path.clone(),
                });
            }
        }
        Op::HardLink { source, parent, name } => {
            let Some(source) = tree.pick(source, |item| linkable(item, avoid)) else {
                return changes;
            };
            let dirs = tree.dirs();
            let parent = dirs[parent.index(dirs.len())];
            if let Some(name) = free_name(&tree, parent, name, avoid) {
                changes.push(Change::HardLink {
                    source: source.path.clone(),
                    path: join(parent, name),
                });
            }
        }
        Op::BreakLink { victim, same_content } => {
            if let Some(item) = tree.pick(victim, |item| item.file && item.nlink > 1) {
                changes.push(Change::BreakLink {
                    path: item.path.clone(),
                    same_content: *same_content,
                });
            }
        }
        Op::Chmod { victim, mode } => {
            if let Some(item) = tree.pick(victim, |item| !item.is_symlink()) {
                changes.push(Change::Chmod {
                    path: item.path.clone(),
                    mode: MODES[mode.index(MODES.len())],
                });
            }
        }
        Op::Chown { victim, owner } => {
            if let Some(item) = tree.pick(victim, |_| true) {
                let (uid, gid) = OWNERS[owner.index(OWNERS.len())];
                changes.push(Change::Chown {
                    path: item.path.clone(),
                    uid,
                    gid,
                });
            }
        }
        Op::SetXattr { victim, name, seed } => {
            let names: Vec<&[u8]> = XATTRS
                .into_iter()
                .filter(|name| !avoid.odd_xattrs || std::str::from_utf8(name).is_ok())
                .collect();
            let name = names[name.index(names.len())];
            let capability = name == b"security.capability";
            if let Some(item) = tree.pick(victim, |item| xattr_fits(item.file, item.is_dir(), name, avoid)) {
                let mut value = match seed % 5 {
                    _ if capability => capability_value(*seed),
                    // Binary values, and now and then one with a newline.
                    0 => b"a\nb".to_vec(),
                    _ => content(usize::from(seed % 4), *seed),
                };
                if avoid.newline_xattrs {
                    value.iter_mut().filter(|b| **b == b'\n').for_each(|b| *b = b'.');
                }
                changes.push(Change::SetXattr {
                    path: item.path.clone(),
                    name: name.to_vec(),
                    value,
                });
            }
        }
        Op::RemoveXattr { victim, which } => {
            if let Some(item) = tree.pick(victim, |item| !item.xattrs.is_empty()) {
                changes.push(Change::RemoveXattr {
                    path: item.path.clone(),
                    name: item.xattrs[which.index(item.xattrs.len())].clone(),
                });
            }
        }
        Op::SetMtime { victim, secs, nsec } => {
            if let Some(item) = tree.pick(victim, |_| true) {
                changes.push(Change::SetMtime {
                    path: item.path.clone(),
                    secs: EXPLICIT_BASE + EXPLICIT_STEP * step as i64 + i64::from(*secs) % EXPLICIT_STEP,
                    nsec: if avoid.nsec { 0 } else { *nsec },
                });
            }
        }
        Op::NsecOnly { victim, nsec } => {
            if let Some(item) = tree.pick(victim, |_| true) {
                changes.push(Change::NsecOnly {
                    path: item.path.clone(),
                    nsec: *nsec,
                });
            }
        }
        Op::Rewrite {
            victim,
            seed,
            keep_mtime,
        } => {
            if let Some(item) = tree.pick(victim, |item| item.file && item.size > 0) {
                changes.push(Change::Rewrite {
                    path: item.path.clone(),
                    seed: *seed,
                    keep_mtime: *keep_mtime && !avoid.same_mtime,
                });
            }
        }
    }
    changes
}

fn linkable(item: &Item, avoid: &Avoid) -> bool {
    item.file || (!avoid.node_links && !item.is_dir())
}

/// The changes that create `new` at `path`; symlink targets come from
/// `tree` (listed before `path` was removed), never `path` or below it.
fn creation(tree: &Listing, path: &[u8], new: &New, avoid: &Avoid, changes: &mut Vec<Change>) {
    let path = path.to_vec();
    match new {
        New::File { len, seed } => changes.push(Change::Write {
            path,
            len: *len,
            seed: *seed,
        }),
        New::Dir { children } => {
            let files = NAMES.iter().take(usize::from(*children)).enumerate();
            let files: Vec<Change> = files
                .map(|(n, name)| Change::Write {
                    path: join(&path, name),
                    len: 3 + n as u16,
                    seed: n as u8,
                })
                .collect();
            changes.push(Change::Mkdir { path });
            changes.extend(files);
        }
        New::Symlink(target) => changes.push(Change::Symlink {
            target: link_target(tree, &path, target, avoid),
            path,
        }),
        New::Node(node) => changes.push(Change::Mknod {
            path,
            node: match node {
                Node::Fifo => NodeKind::Fifo,
                Node::Char(i) => {
                    let (major, minor) = CHAR_DEVICES[i.index(CHAR_DEVICES.len())];
                    NodeKind::Char(major, minor)
                }
                Node::Block(i) => {
                    let (major, minor) = BLOCK_DEVICES[i.index(BLOCK_DEVICES.len())];
                    NodeKind::Block(major, minor)
                }
            },
        }),
    }
}

/// The first name of [`NAMES`], from the `index`th on, not taken in `parent`.
fn free_name(tree: &Listing, parent: &[u8], index: &Index, avoid: &Avoid) -> Option<&'static [u8]> {
    let start = index.index(NAMES.len());
    (0..NAMES.len())
        .map(|n| NAMES[(start + n) % NAMES.len()])
        .filter(|name| !(avoid.dev && parent.is_empty() && *name == b"dev"))
        .find(|name| tree.lookup(&join(parent, name)).is_none())
}

fn link_target(tree: &Listing, link: &[u8], target: &Target, avoid: &Avoid) -> Vec<u8> {
    let inside = |p: &[u8]| p == link || (p.starts_with(link) && p.get(link.len()) == Some(&b'/'));
    let dirs = || tree.dirs().into_iter().filter(|p| !inside(p)).collect::<Vec<_>>();
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
