//! What a root on disk holds: one walk in a stable order, kept compact (the
//! paths in one byte buffer, metadata packed), since a root may have a
//! hundred thousand entries and more.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use color_eyre::eyre::{eyre, Result, WrapErr};
use rustix::fs::{self, AtFlags, Dir, FileType, OFlags, Statx, StatxFlags};

use super::compact::Metas;
use super::tree::Tree;
use super::{Kind, Meta, Time};

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
    /// Entry `i`'s inode as it was read (`None` for what a mount hides).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The inode number.
    pub ino: u64,
    /// The change time (ctime).
    pub ctime: Time,
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

    /// The record of this scan for `tree`, the tree it read (a tree that
    /// holds other paths gets none).
    pub fn record_for(&self, tree: &Tree) -> Option<Record> {
        let mut stamps = vec![None; tree.metas().len()];
        let order = self.sorted();
        if order.len() != tree.len() {
            return None;
        }
        for ((path, inode), i) in tree.entries().zip(order) {
            if path != self.path(i) {
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
    scan_since(root, None)
}

/// Scans `root` as [`scan`] does, taking what `previous` recorded of an
/// entry whose inode has not changed since (see [`Record`]) instead of
/// reading its xattrs and link target again.
pub fn scan_since(root: &Path, previous: Option<Previous<'_>>) -> Result<Scan> {
    let started = Time::now();
    let canonical = std::fs::canonicalize(root).wrap_err_with(|| format!("reading {}", root.display()))?;
    let mounts = mounts_below(&canonical);
    let fd = fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        fs::Mode::empty(),
    )
    .wrap_err_with(|| format!("reading {}", root.display()))?;
    let st = stat(fd.as_fd(), c"", AtFlags::EMPTY_PATH).wrap_err_with(|| format!("reading {}", root.display()))?;
    let dev = device(st.stx_dev_major, st.stx_dev_minor);
    let previous = previous.filter(|p| {
        let r = p.record;
        r.root == canonical.as_os_str().as_bytes() && r.dev == dev && r.root_ino == st.stx_ino
    });
    let mut walker = Walker {
        root,
        root_dev: dev,
        mounts: &mounts,
        previous,
        rel: Vec::new(),
        out: Scan {
            root: root.to_path_buf(),
            canonical: canonical.as_os_str().as_bytes().to_vec(),
            root_dev: dev,
            root_ino: st.stx_ino,
            started,
            ..Scan::default()
        },
    };
    if walker.entry(fd.as_fd(), c"", &st)? {
        let dir = Dir::new(fd).wrap_err_with(|| format!("walking {}", root.display()))?;
        walker.walk(dir)?;
    }
    Ok(walker.out)
}

fn device(major: u32, minor: u32) -> u64 {
    (u64::from(major) << 32) | u64::from(minor)
}

fn stat(dir: BorrowedFd<'_>, name: &CStr, flags: AtFlags) -> std::io::Result<Statx> {
    let want = StatxFlags::TYPE
        | StatxFlags::MODE
        | StatxFlags::NLINK
        | StatxFlags::UID
        | StatxFlags::GID
        | StatxFlags::MTIME
        | StatxFlags::CTIME
        | StatxFlags::INO
        | StatxFlags::SIZE;
    Ok(fs::statx(dir, name, flags | AtFlags::SYMLINK_NOFOLLOW, want)?)
}

/// A scan under way. Each entry is read relative to its directory's open
/// handle, so no path is resolved from the root again but for xattrs.
struct Walker<'a> {
    root: &'a Path,
    root_dev: u64,
    mounts: &'a HashSet<Vec<u8>>,
    previous: Option<Previous<'a>>,
    /// The clean path of the entry at hand.
    rel: Vec<u8>,
    out: Scan,
}

impl Walker<'_> {
    /// The entry at hand on disk, for messages and for what has no call
    /// relative to a directory handle (xattrs).
    fn path(&self) -> PathBuf {
        if self.rel.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(OsStr::from_bytes(&self.rel))
        }
    }

    /// Reads the entries of `dir` (the entry at hand), sorted bytewise,
    /// and goes into each directory among them that is not mounted.
    fn walk(&mut self, mut dir: Dir) -> Result<()> {
        let mut names = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.wrap_err_with(|| format!("walking {}", self.path().display()))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        names.sort_unstable();
        let at = dir
            .fd()
            .wrap_err_with(|| format!("walking {}", self.path().display()))?;
        let parent = self.rel.len();
        for name in &names {
            if parent > 0 {
                self.rel.push(b'/');
            }
            self.rel.extend_from_slice(name.to_bytes());
            let st = stat(at, name, AtFlags::empty()).wrap_err_with(|| format!("reading {}", self.path().display()))?;
            if self.entry(at, name, &st)? {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let sub = fs::openat(at, name.as_c_str(), flags, fs::Mode::empty())
                    .and_then(Dir::new)
                    .wrap_err_with(|| format!("walking {}", self.path().display()))?;
                self.walk(sub)?;
            }
            self.rel.truncate(parent);
        }
        Ok(())
    }

    /// Reads the entry at hand, `name` in `dir`, whose status is `st`,
    /// into the scan; says whether it is a directory to go into. What is
    /// mounted is kept as its mount point: a directory without its contents
    /// or a file without content. Sockets cannot be stored and are left out.
    fn entry(&mut self, dir: BorrowedFd<'_>, name: &CStr, st: &Statx) -> Result<bool> {
        let rel = self.rel.as_slice();
        let mounted = device(st.stx_dev_major, st.stx_dev_minor) != self.root_dev || self.mounts.contains(rel);
        let ft = FileType::from_raw_mode(st.stx_mode.into());
        let is_dir = ft == FileType::Directory;
        if mounted && is_dir {
            log::debug!("leaving out what is mounted on {}", self.path().display());
        }
        let stamp = Stamp {
            ino: st.stx_ino,
            ctime: Time {
                sec: st.stx_ctime.tv_sec,
                nsec: st.stx_ctime.tv_nsec,
            },
        };
        let known = self.known(rel, stamp, st).filter(|_| !mounted);
        // Any non-directory can have several names: files, symlinks, nodes.
        let link_group = (!is_dir && st.stx_nlink > 1 && !mounted).then_some(st.stx_ino);
        let kind = match ft {
            FileType::Directory => Kind::Dir,
            FileType::Symlink => match &known {
                Some(Meta {
                    kind: Kind::Symlink { target },
                    ..
                }) => Kind::Symlink { target: target.clone() },
                _ => Kind::Symlink {
                    target: fs::readlinkat(dir, name, Vec::new())
                        .wrap_err_with(|| format!("reading link {}", self.path().display()))?
                        .into_bytes(),
                },
            },
            FileType::RegularFile => Kind::File {
                size: if mounted { 0 } else { st.stx_size },
            },
            FileType::CharacterDevice => Kind::Char {
                major: st.stx_rdev_major,
                minor: st.stx_rdev_minor,
            },
            FileType::BlockDevice => Kind::Block {
                major: st.stx_rdev_major,
                minor: st.stx_rdev_minor,
            },
            FileType::Fifo => Kind::Fifo,
            _ => {
                log::warn!(
                    "leaving out {}: a socket cannot be stored in a layer",
                    self.path().display()
                );
                return Ok(false);
            }
        };
        let xattrs = match known {
            _ if mounted => Vec::new(),
            Some(meta) => {
                self.out.reused += 1;
                meta.xattrs
            }
            None => {
                self.out.fresh += 1;
                read_xattrs(&self.path())?
            }
        };
        let meta = Meta {
            kind,
            mode: u32::from(st.stx_mode) & 0o7777,
            uid: st.stx_uid.into(),
            gid: st.stx_gid.into(),
            mtime: Time {
                sec: st.stx_mtime.tv_sec,
                nsec: st.stx_mtime.tv_nsec,
            },
            xattrs,
        };
        let rel = std::mem::take(&mut self.rel);
        let pushed = self
            .out
            .push(&rel, &meta, mounted, link_group, (!mounted).then_some(stamp));
        self.rel = rel;
        pushed?;
        Ok(is_dir && !mounted)
    }

    /// What the previous scan recorded of the entry `rel`, when its inode
    /// (number, change time, type and size) is as it was then and changed
    /// well before that scan began.
    fn known(&self, rel: &[u8], now: Stamp, st: &Statx) -> Option<Meta> {
        let p = self.previous.as_ref()?;
        let inode = p.tree.inode(rel)?;
        let then = (*p.record.stamps.get(inode as usize)?)?;
        if then != now || then.ctime >= p.record.trusted_before {
            return None;
        }
        let meta = p.tree.metas().get(inode);
        let ft = FileType::from_raw_mode(st.stx_mode.into());
        let size = if ft == FileType::RegularFile { st.stx_size } else { 0 };
        (file_type(&meta.kind) == ft && p.tree.metas().file_size(inode) == size).then_some(meta)
    }
}

fn file_type(kind: &Kind) -> FileType {
    match kind {
        Kind::File { .. } => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink { .. } => FileType::Symlink,
        Kind::Char { .. } => FileType::CharacterDevice,
        Kind::Block { .. } => FileType::BlockDevice,
        Kind::Fifo => FileType::Fifo,
    }
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

        let again = scan_since(root, previous()).unwrap();
        assert_eq!((again.reused(), again.fresh()), (again.len(), 0));
        assert_same_scan(&again, &first);
        let racy = scan_since(
            root,
            Some(Previous {
                tree: &tree,
                record: &honest,
            }),
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

        let changed = scan_since(root, previous()).unwrap();
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
