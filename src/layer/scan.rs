//! What a root on disk holds: one walk in a stable order, kept compact (the
//! paths in one byte buffer, metadata packed), since a root may have a
//! hundred thousand entries and more.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::num::NonZeroU64;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use color_eyre::eyre::{eyre, Result, WrapErr};
use rustix::fs::{self, AtFlags, Dir, OFlags};

use super::compact::Metas;
use super::tree::Tree;
use super::{Meta, Time};

mod walk;

/// The entries found under a root, in walk order: parents before children,
/// names sorted bytewise. An entry is named by its index.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    root: PathBuf,
    /// Every path, one after another.
    arena: Vec<u8>,
    entries: Vec<Entry>,
    /// Entry `i`'s metadata is `metas` `i`.
    metas: Metas,
    /// The inode numbers of files with several names, by entry.
    links: HashMap<u32, u64>,
    /// Entry `i`'s inode as it was read (`None` for what a mount hides, and
    /// where the file system gives no stamp).
    stamps: Vec<Option<Stamp>>,
    /// The root as [`Record::root`] names it, and its device and inode.
    canonical: Vec<u8>,
    root_dev: u64,
    root_ino: u64,
    /// When the scan began.
    started: Time,
    /// How many entries were taken from the previous scan's record, and
    /// how many (not mounted) were read instead.
    reused: usize,
    fresh: usize,
}

/// An inode as the kernel last changed it: its number and change time,
/// which every write, chmod, chown, xattr change and rename moves and
/// which no caller can set back.
///
/// 16 bytes, and as many in an `Option`: a scan holds one per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    ino: NonZeroU64,
    /// The change time (ctime), in nanoseconds since the epoch.
    ctime: i64,
}

impl Stamp {
    /// The stamp of inode `ino` last changed at `ctime`; `None` for inode
    /// number 0 or a time out of the range of 64-bit nanoseconds (before
    /// 1678, after 2261): such an inode is read every time.
    pub fn new(ino: u64, ctime: Time) -> Option<Stamp> {
        let nanos = ctime.sec.checked_mul(1_000_000_000)?.checked_add(ctime.nsec.into())?;
        Stamp::from_parts(ino, nanos)
    }

    /// The stamp of inode `ino` last changed `ctime` nanoseconds after the epoch.
    pub fn from_parts(ino: u64, ctime: i64) -> Option<Stamp> {
        Some(Stamp {
            ino: NonZeroU64::new(ino)?,
            ctime,
        })
    }

    /// The inode number and the change time in nanoseconds since the epoch.
    pub fn parts(&self) -> (u64, i64) {
        (self.ino.get(), self.ctime)
    }

    /// Whether the inode last changed before `t`.
    pub fn changed_before(&self, t: Time) -> bool {
        match t.sec.checked_mul(1_000_000_000) {
            Some(ns) => self.ctime < ns.saturating_add(t.nsec.into()),
            None => t.sec > 0,
        }
    }
}

/// What one scan of a root saw of the inodes of the tree it read, so that
/// the next scan of the same root need not read the xattrs and link target
/// of an inode that has not changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The root, canonical.
    pub root: Vec<u8>,
    /// The root's device and inode number: another file system mounted on
    /// the same path is another root.
    pub dev: u64,
    /// See `dev`.
    pub root_ino: u64,
    /// Only an inode changed before this time is taken as recorded: one
    /// changed while (or just before) the scan read it might change again
    /// within the same tick of its clock, and keep its change time.
    pub trusted_before: Time,
    /// The stamp of each inode of the tree, by the tree's inode number.
    pub stamps: Vec<Option<Stamp>>,
}

/// How long before a scan began an inode must have changed for its stamp
/// to be trusted: more than the coarsest change-time granularity of a root
/// file system (one second on ext4 with small inodes, two on FAT).
const RACY_SECS: i64 = 3;

/// A tree a previous scan of a root read, with its record.
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    /// The tree, as that scan read it.
    pub tree: &'a Tree,
    /// The record of that scan.
    pub record: &'a Record,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    off: u32,
    len: u32,
    /// What a mount hides: no content is read.
    hidden: bool,
}

impl Scan {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The clean path of entry `i` (the root is empty).
    pub fn path(&self, i: u32) -> &[u8] {
        let e = &self.entries[i as usize];
        &self.arena[e.off as usize..e.off as usize + e.len as usize]
    }

    /// The metadata of entry `i`; every name of a hard-linked file has the file's.
    pub fn meta(&self, i: u32) -> Meta {
        self.metas.get(i)
    }

    /// Every entry's metadata, by entry index.
    pub fn metas(&self) -> &Metas {
        &self.metas
    }

    /// Makes entry `i` say `meta` instead of what was read.
    pub fn set_meta(&mut self, i: u32, meta: &Meta) {
        self.metas.replace(i, meta);
    }

    /// Where to read entry `i`'s content; `None` for what a mount hides.
    pub fn source(&self, i: u32) -> Option<PathBuf> {
        if self.entries[i as usize].hidden {
            return None;
        }
        let path = self.path(i);
        Some(if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(path))
        })
    }

    /// Identifies the hard-link group of a file with several names.
    pub fn link_group(&self, i: u32) -> Option<u64> {
        self.links.get(&i).copied()
    }

    /// The entry indices in path order (bytewise, as a [`super::tree::Tree`] is).
    pub fn sorted(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.entries.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.path(a).cmp(self.path(b)));
        order
    }

    /// The names of every hard-link group with several names in the scan,
    /// each list sorted.
    pub fn link_groups(&self) -> HashMap<u64, Vec<&[u8]>> {
        let mut out: HashMap<u64, Vec<&[u8]>> = HashMap::new();
        for (&i, &g) in &self.links {
            out.entry(g).or_default().push(self.path(i));
        }
        out.retain(|_, names| names.len() > 1);
        for names in out.values_mut() {
            names.sort_unstable();
        }
        out
    }

    /// How many entries were taken from the previous scan's record rather
    /// than read.
    pub fn reused(&self) -> usize {
        self.reused
    }

    /// How many entries were read in full although they are not mounted:
    /// all of them without a record, the changed ones with one.
    pub fn fresh(&self) -> usize {
        self.fresh
    }

    /// The record of this scan for `tree`, the tree it read; a tree that
    /// holds other paths, or says other things of one, gets none.
    pub fn record_for(&self, tree: &Tree) -> Option<Record> {
        let mut stamps = vec![None; tree.metas().len()];
        let order = self.sorted();
        if order.len() != tree.len() {
            return None;
        }
        for ((path, inode), i) in tree.entries().zip(order) {
            if path != self.path(i) || !tree.metas().same(inode, &self.metas, i) {
                return None;
            }
            stamps[inode as usize] = self.stamps[i as usize];
        }
        Some(Record {
            root: self.canonical.clone(),
            dev: self.root_dev,
            root_ino: self.root_ino,
            trusted_before: Time {
                sec: self.started.sec - RACY_SECS,
                nsec: self.started.nsec,
            },
            stamps,
        })
    }

    fn push(&mut self, path: &[u8], meta: &Meta, hidden: bool, link: Option<u64>, stamp: Option<Stamp>) -> Result<()> {
        let too_many = || eyre!("the root has more names than one scan can hold (4 GiB of paths)");
        let off = u32::try_from(self.arena.len()).map_err(|_| too_many())?;
        let len = u32::try_from(path.len()).map_err(|_| too_many())?;
        off.checked_add(len).ok_or_else(too_many)?;
        self.arena.extend_from_slice(path);
        let i = self.metas.push(meta);
        if let Some(ino) = link {
            self.links.insert(i, ino);
        }
        self.entries.push(Entry { off, len, hidden });
        self.stamps.push(stamp);
        Ok(())
    }
}

fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let names = match xattr::list(path) {
        Ok(names) => names,
        // A file system without xattr support has none to keep.
        Err(e) if e.raw_os_error() == Some(95) => return Ok(out),
        Err(e) => return Err(e).wrap_err_with(|| format!("listing xattrs of {}", path.display())),
    };
    for name in names {
        if let Some(value) =
            xattr::get(path, &name).wrap_err_with(|| format!("reading xattrs of {}", path.display()))?
        {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// The mount points below `root` (canonical; relative, clean), from the
/// kernel's table.
fn mounts_below(root: &Path) -> HashSet<Vec<u8>> {
    let table = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    let prefix = [root.as_os_str().as_bytes(), b"/"].concat();
    table
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(unescape_mount)
        .filter_map(|m| m.strip_prefix(prefix.as_slice()).map(<[u8]>::to_vec))
        .collect()
}

/// A mount point as mountinfo writes it: space, tab, newline and backslash as
/// `\ooo`.
fn unescape_mount(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Walks `root` in a stable order (names sorted bytewise, parents before
/// children), the root itself first. What is mounted inside it (proc, sys, a
/// bind-mounted dev or cache, any mount) is left out, decided by the mount:
/// the mount point is kept as it appears, a directory without its contents
/// or a file without content. Sockets cannot be stored and are left out.
/// Times are kept as they are (`SOURCE_DATE_EPOCH` sets only the times we
/// write ourselves), so the tree comes back exactly.
pub fn scan(root: &Path) -> Result<Scan> {
    scan_since(root, None, 1)
}

/// Scans `root` as [`scan`] does, on `jobs` threads, taking what
/// `previous` recorded of an entry whose inode has not changed since (see
/// [`Record`]) instead of reading its xattrs and link target again.
pub fn scan_since(root: &Path, previous: Option<Previous<'_>>, jobs: usize) -> Result<Scan> {
    let started = Time::now();
    let reading = || format!("reading {}", root.display());
    let canonical = std::fs::canonicalize(root).wrap_err_with(reading)?;
    let mounts = mounts_below(&canonical);
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = fs::open(root, flags, fs::Mode::empty()).wrap_err_with(reading)?;
    let st = walk::stat(fd.as_fd(), c"", AtFlags::EMPTY_PATH).wrap_err_with(reading)?;
    let dev = walk::device(st.stx_dev_major, st.stx_dev_minor);
    let previous = previous.filter(|p| {
        let r = p.record;
        r.root == canonical.as_os_str().as_bytes() && r.dev == dev && r.root_ino == st.stx_ino
    });
    let cx = walk::Context {
        root,
        root_dev: dev,
        mounts: &mounts,
        previous,
    };
    let mut out = Scan {
        root: root.to_path_buf(),
        canonical: canonical.as_os_str().as_bytes().to_vec(),
        root_dev: dev,
        root_ino: st.stx_ino,
        started,
        ..Scan::default()
    };
    let mut add = |rel: &[u8], read: walk::Read| {
        if read.reused {
            out.reused += 1;
        } else if !read.hidden {
            out.fresh += 1;
        }
        out.push(rel, &read.meta, read.hidden, read.link, read.stamp)
    };
    let top = cx.read(fd.as_fd(), b"", c"", &st)?;
    let descend = top.as_ref().is_some_and(|r| r.descend);
    if let Some(read) = top {
        add(b"", read)?;
    }
    if descend {
        let dir = Dir::new(fd).wrap_err_with(reading)?;
        walk::walk(&cx, dir, jobs, &mut add)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree a first layer of `scan` makes, as a stash caches it.
    fn tree_of(scan: &Scan) -> Tree {
        let mut tree = Tree::new();
        let plan = super::super::write::plan(scan, &Tree::new());
        super::super::write::checked(&plan, &mut tree).unwrap();
        tree
    }

    /// Every entry of `a` and `b` says the same, in the same order.
    fn assert_same_scan(a: &Scan, b: &Scan) {
        let paths = |s: &Scan| (0..s.len() as u32).map(|i| s.path(i).to_vec()).collect::<Vec<_>>();
        assert_eq!(paths(a), paths(b));
        for i in 0..a.len() as u32 {
            assert_eq!(a.meta(i), b.meta(i), "{}", crate::layer::show(a.path(i)));
        }
    }

    #[test]
    fn stamps_keep_nanoseconds_and_compare_with_any_time() {
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 16);
        let t = Time {
            sec: -2,
            nsec: 999_999_999,
        };
        let stamp = Stamp::new(7, t).unwrap();
        assert_eq!(stamp.parts(), (7, -1_000_000_001));
        assert!(stamp.changed_before(Time { sec: -1, nsec: 0 }));
        assert!(!stamp.changed_before(t));
        assert!(stamp.changed_before(Time::secs(i64::MAX)));
        assert!(!stamp.changed_before(Time::secs(i64::MIN)));
        assert_eq!(Stamp::new(0, t), None, "inode 0 is never trusted");
        assert_eq!(Stamp::new(7, Time::secs(i64::MAX)), None);
    }

    #[test]
    fn every_number_of_threads_walks_in_the_same_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["a/x/y", "a.b", "a-c/z", "b/1/2/3", "b/1/4", "c"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["a/f", "a/x/y/f", "a.b/f", "a-c/z/f", "b/1/2/3/f", "b/1/f", "c/f", "f"] {
            std::fs::write(root.join(f), f).unwrap();
        }
        let one = scan_since(root, None, 1).unwrap();
        let paths: Vec<&[u8]> = (0..one.len() as u32).map(|i| one.path(i)).collect();
        let want: [&[u8]; 21] = [
            b"",
            b"a",
            b"a/f",
            b"a/x",
            b"a/x/y",
            b"a/x/y/f",
            b"a-c",
            b"a-c/z",
            b"a-c/z/f",
            b"a.b",
            b"a.b/f",
            b"b",
            b"b/1",
            b"b/1/2",
            b"b/1/2/3",
            b"b/1/2/3/f",
            b"b/1/4",
            b"b/1/f",
            b"c",
            b"c/f",
            b"f",
        ];
        assert_eq!(paths, want);
        for jobs in [2, 3, 8] {
            assert_same_scan(&scan_since(root, None, jobs).unwrap(), &one);
        }
    }

    #[test]
    fn a_rescan_takes_only_unchanged_inodes_from_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let at = |p: &str| root.join(p);
        std::fs::create_dir(at("d")).unwrap();
        std::fs::write(at("d/kept"), b"kept").unwrap();
        xattr::set(at("d/kept"), "user.k", b"1").unwrap();
        std::fs::write(at("x"), b"x").unwrap();
        xattr::set(at("x"), "user.k", b"1").unwrap();
        std::os::unix::fs::symlink("one", at("link")).unwrap();
        std::fs::write(at("mode"), b"m").unwrap();
        std::fs::write(at("data"), b"one").unwrap();
        let first = scan(root).unwrap();
        assert_eq!((first.reused(), first.fresh()), (0, first.len()));
        let tree = tree_of(&first);
        let mut record = first.record_for(&tree).expect("the scan's own tree");
        let mut other = tree.clone();
        let mut meta = other.get(b"x").unwrap();
        meta.xattrs.clear();
        other.insert(b"x", &meta);
        assert!(first.record_for(&other).is_none(), "a record for another tree");
        assert!(first.record_for(&Tree::new()).is_none());
        // Everything just changed, so nothing would be trusted yet: as if the
        // scan had begun much later.
        let honest = record.clone();
        record.trusted_before = Time::secs(i64::MAX);
        let previous = || {
            Some(Previous {
                tree: &tree,
                record: &record,
            })
        };

        let again = scan_since(root, previous(), 2).unwrap();
        assert_eq!((again.reused(), again.fresh()), (again.len(), 0));
        assert_same_scan(&again, &first);
        let racy = scan_since(
            root,
            Some(Previous {
                tree: &tree,
                record: &honest,
            }),
            2,
        )
        .unwrap();
        assert_eq!(racy.reused(), 0, "an inode changed just before the scan was trusted");

        // Coarse clocks tick every few milliseconds: the changes below must
        // not fall into the tick the first scan read the change times in.
        std::thread::sleep(std::time::Duration::from_millis(50));
        xattr::set(at("x"), "user.k", b"2").unwrap();
        std::fs::remove_file(at("link")).unwrap();
        std::os::unix::fs::symlink("two", at("link")).unwrap();
        std::fs::set_permissions(at("mode"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let mtime = std::fs::metadata(at("data")).unwrap().modified().unwrap();
        std::fs::write(at("data"), b"three").unwrap();
        std::fs::File::options()
            .write(true)
            .open(at("data"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();

        let changed = scan_since(root, previous(), 2).unwrap();
        assert_same_scan(&changed, &scan(root).unwrap());
        // The root changed too: a name in it was made anew.
        assert_eq!(
            (changed.reused(), changed.fresh()),
            (2, changed.len() - 2),
            "d and d/kept"
        );
        assert!(tree.first_difference_from(&changed).is_some());

        // Another root (here: the same one under another name) is not read
        // by this record.
        let mut other = record.clone();
        other.root.extend_from_slice(b"-other");
        let elsewhere = scan_since(
            root,
            Some(Previous {
                tree: &tree,
                record: &other,
            }),
            2,
        )
        .unwrap();
        assert_eq!(elsewhere.reused(), 0);
    }

    #[test]
    fn mountinfo_escapes_are_read() {
        assert_eq!(unescape_mount(br"/var/tmp/a\040b\134c"), b"/var/tmp/a b\\c");
        assert_eq!(unescape_mount(b"/plain"), b"/plain");
    }
}
