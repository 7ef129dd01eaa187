//! Root trees in memory: what the layers of an image make (replayed with the
//! same rules as the unpacker), and what a root on disk holds (scanned).
//! Comparing the two tells which entries a delta layer must carry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use color_eyre::eyre::{Result, WrapErr};

use super::apply::{self, Node, Target};
use super::{is_within, Kind, Meta, StackedLayer, Time};

/// A tree: clean paths (bytes; the root is empty) to entries. Names of one
/// hard-linked file share an inode number.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    paths: BTreeMap<Vec<u8>, usize>,
    inodes: Vec<Meta>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// The tree `layers` make, lowest first, every blob verified.
    pub fn replay(layers: &[StackedLayer]) -> Result<Tree> {
        let mut tree = Tree::new();
        apply::apply_layers(layers, &mut tree, &mut |_| Ok(true))?;
        Ok(tree)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// The entry at `path`.
    pub fn get(&self, path: &[u8]) -> Option<&Meta> {
        self.paths.get(path).map(|&i| &self.inodes[i])
    }

    /// Every entry, in path order, with its inode number.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], usize, &Meta)> {
        self.paths.iter().map(|(p, &i)| (p.as_slice(), i, &self.inodes[i]))
    }

    /// Adds (or replaces) the entry `path` as a new inode, and returns it.
    pub fn insert(&mut self, path: Vec<u8>, meta: Meta) -> usize {
        self.inodes.push(meta);
        self.paths.insert(path, self.inodes.len() - 1);
        self.inodes.len() - 1
    }

    /// Adds `path` as another name of inode `inode`.
    pub fn insert_link(&mut self, path: Vec<u8>, inode: usize) {
        self.paths.insert(path, inode);
    }

    /// For every path whose inode has several names: all of them, sorted.
    pub fn link_groups(&self) -> HashMap<&[u8], Vec<&[u8]>> {
        let mut by_inode: HashMap<usize, Vec<&[u8]>> = HashMap::new();
        for (p, &i) in &self.paths {
            by_inode.entry(i).or_default().push(p);
        }
        let mut out = HashMap::new();
        for names in by_inode.into_values().filter(|n| n.len() > 1) {
            for p in &names {
                out.insert(*p, names.clone());
            }
        }
        out
    }

    /// The first path at which `self` and `other` differ, in an entry or in
    /// the names its inode has; `None` when they hold the same tree.
    pub fn first_difference(&self, other: &Tree) -> Option<Vec<u8>> {
        let (ga, gb) = (self.link_groups(), other.link_groups());
        let a = self.entries().map(|(p, _, m)| (p, m, ga.get(p)));
        let b = other.entries().map(|(p, _, m)| (p, m, gb.get(p)));
        let mut pairs = a.zip(b);
        if let Some(((p, _, _), _)) = pairs.find(|(x, y)| x != y) {
            return Some(p.to_vec());
        }
        match self.len().cmp(&other.len()) {
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater => self.entries().nth(other.len()).map(|e| e.0.to_vec()),
            std::cmp::Ordering::Less => other.entries().nth(self.len()).map(|e| e.0.to_vec()),
        }
    }

    fn below(&self, dir: &[u8]) -> Vec<Vec<u8>> {
        self.paths
            .range(dir.to_vec()..)
            .take_while(|(k, _)| k.starts_with(dir))
            .filter(|(k, _)| is_within(k, dir) && k.as_slice() != dir)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl PartialEq for Tree {
    fn eq(&self, other: &Tree) -> bool {
        self.first_difference(other).is_none()
    }
}

impl Target for Tree {
    fn node(&mut self, path: &[u8]) -> Result<Option<Node>> {
        if path.is_empty() {
            return Ok(Some(Node::Dir));
        }
        Ok(self.get(path).map(|m| match &m.kind {
            Kind::Dir => Node::Dir,
            Kind::Symlink { target } => Node::Symlink(target.clone()),
            _ => Node::Other,
        }))
    }

    fn children(&mut self, dir: &[u8]) -> Result<Vec<Vec<u8>>> {
        let skip = if dir.is_empty() { 0 } else { dir.len() + 1 };
        Ok(self
            .below(dir)
            .into_iter()
            .map(|p| p[skip..].to_vec())
            .filter(|rest| !rest.contains(&b'/'))
            .collect())
    }

    fn remove(&mut self, path: &[u8]) -> Result<()> {
        for p in self.below(path) {
            self.paths.remove(&p);
        }
        self.paths.remove(path);
        Ok(())
    }

    fn mkdir(&mut self, path: &[u8]) -> Result<()> {
        let _ = self.insert(
            path.to_vec(),
            Meta {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: Time::default(),
                xattrs: Vec::new(),
            },
        );
        Ok(())
    }

    fn put(&mut self, path: &[u8], meta: &Meta, _content: &mut dyn Read) -> Result<()> {
        self.insert(path.to_vec(), meta.clone());
        Ok(())
    }

    fn set_dir(&mut self, path: &[u8], meta: &Meta, _exists: bool) -> Result<()> {
        self.insert(path.to_vec(), meta.clone());
        Ok(())
    }

    fn link(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
        let inode = self.paths[target];
        self.insert_link(path.to_vec(), inode);
        Ok(())
    }

    fn keep_dirlink(&mut self, path: &[u8], meta: &Meta) -> Result<()> {
        let inode = self.paths[path];
        let link = &mut self.inodes[inode];
        link.uid = meta.uid;
        link.gid = meta.gid;
        link.mtime = meta.mtime;
        Ok(())
    }
}

/// One entry found on disk, in walk order.
#[derive(Debug, Clone)]
pub struct Scanned {
    /// Clean path (the root is empty).
    pub path: Vec<u8>,
    /// Its metadata; every name of a hard-linked file has the file's.
    pub meta: Meta,
    /// Where to read a regular file's content; `None` for what a mount hides.
    pub source: Option<PathBuf>,
    /// Identifies a hard-link group (device, inode) for files with several names.
    pub link_group: Option<(u64, u64)>,
}

fn major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

fn minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
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

/// The mount points below `root` (relative, clean), from the kernel's table.
fn mounts_below(root: &Path) -> HashSet<Vec<u8>> {
    let Ok(root) = std::fs::canonicalize(root) else {
        return HashSet::new();
    };
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
pub fn scan(root: &Path) -> Result<Vec<Scanned>> {
    let mounts = mounts_below(root);
    let root_dev = std::fs::symlink_metadata(root)
        .wrap_err_with(|| format!("reading {}", root.display()))?
        .dev();
    let mut out = Vec::new();
    let mut walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()))
        .into_iter();
    while let Some(entry) = walker.next() {
        let entry = entry.wrap_err_with(|| format!("walking {}", root.display()))?;
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(path).as_os_str().as_bytes().to_vec();
        let md = entry
            .metadata()
            .wrap_err_with(|| format!("reading {}", path.display()))?;
        let mounted = md.dev() != root_dev || mounts.contains(&rel);
        let ft = md.file_type();
        if mounted && ft.is_dir() {
            walker.skip_current_dir();
            log::debug!("leaving out what is mounted on {}", path.display());
        }
        // Any non-directory can have several names: files, symlinks, nodes.
        let link_group = (!ft.is_dir() && md.nlink() > 1 && !mounted).then(|| (md.dev(), md.ino()));
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).wrap_err_with(|| format!("reading link {}", path.display()))?;
            Kind::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            }
        } else if ft.is_file() {
            Kind::File {
                size: if mounted { 0 } else { md.len() },
            }
        } else if ft.is_char_device() {
            Kind::Char {
                major: major(md.rdev()),
                minor: minor(md.rdev()),
            }
        } else if ft.is_block_device() {
            Kind::Block {
                major: major(md.rdev()),
                minor: minor(md.rdev()),
            }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            log::warn!("leaving out {}: a socket cannot be stored in a layer", path.display());
            continue;
        };
        let mtime = Time {
            sec: md.mtime(),
            nsec: md.mtime_nsec() as u32,
        };
        let meta = Meta {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid().into(),
            gid: md.gid().into(),
            mtime,
            xattrs: if mounted { Vec::new() } else { read_xattrs(path)? },
        };
        out.push(Scanned {
            path: rel,
            meta,
            source: (!mounted).then(|| path.to_path_buf()),
            link_group,
        });
    }
    Ok(out)
}

/// The tree a scan found, hard links as shared inodes.
pub fn of_scan(scanned: &[Scanned]) -> Tree {
    let mut tree = Tree::new();
    let mut first: HashMap<(u64, u64), usize> = HashMap::new();
    for s in scanned {
        match s.link_group.and_then(|g| first.get(&g).copied()) {
            Some(inode) => tree.insert_link(s.path.clone(), inode),
            None => {
                let inode = tree.insert(s.path.clone(), s.meta.clone());
                if let Some(g) = s.link_group {
                    first.insert(g, inode);
                }
            }
        }
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> Meta {
        Meta {
            kind: Kind::File { size },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Time::secs(1),
            xattrs: vec![],
        }
    }

    #[test]
    fn removing_spares_siblings_with_a_common_prefix() {
        let mut t = Tree::new();
        for p in ["a", "a/x", "a/y/z", "a.txt", "ab"] {
            t.insert(p.as_bytes().to_vec(), file(0));
        }
        t.remove(b"a").unwrap();
        let left: Vec<&[u8]> = t.entries().map(|(p, _, _)| p).collect();
        assert_eq!(left, vec![b"a.txt".as_slice(), b"ab".as_slice()]);
    }

    #[test]
    fn children_are_direct_names_only() {
        let mut t = Tree::new();
        for p in ["a", "a/x", "a/y", "a/y/z", "b"] {
            t.insert(p.as_bytes().to_vec(), file(0));
        }
        assert_eq!(t.children(b"a").unwrap(), vec![b"x".to_vec(), b"y".to_vec()]);
        assert_eq!(t.children(b"").unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn mountinfo_escapes_are_read() {
        assert_eq!(unescape_mount(br"/var/tmp/a\040b\134c"), b"/var/tmp/a b\\c");
        assert_eq!(unescape_mount(b"/plain"), b"/plain");
    }

    #[test]
    fn device_numbers_split_like_glibc() {
        // glibc's makedev()
        let makedev =
            |ma: u64, mi: u64| ((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12);
        for (ma, mi) in [(8, 1), (259, 65536), (4095, 255), (4096, 256)] {
            let dev = makedev(ma, mi);
            assert_eq!((u64::from(major(dev)), u64::from(minor(dev))), (ma, mi));
        }
    }
}
