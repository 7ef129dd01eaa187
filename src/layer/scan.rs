//! What a root on disk holds: one walk in a stable order, kept compact (the
//! paths in one byte buffer, metadata packed), since a root may have a
//! hundred thousand entries and more.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use color_eyre::eyre::{eyre, Result, WrapErr};

use super::compact::Metas;
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

    fn push(&mut self, path: &[u8], meta: &Meta, hidden: bool, link: Option<u64>) -> Result<()> {
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
        Ok(())
    }
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
pub fn scan(root: &Path) -> Result<Scan> {
    let mounts = mounts_below(root);
    let root_dev = std::fs::symlink_metadata(root)
        .wrap_err_with(|| format!("reading {}", root.display()))?
        .dev();
    let mut out = Scan {
        root: root.to_path_buf(),
        ..Scan::default()
    };
    let at = Place {
        root,
        root_dev,
        mounts: &mounts,
    };
    walk(&at, &mut |walked| read_entry(&at, walked, &mut out))?;
    Ok(out)
}

/// Where a scan runs.
#[derive(Clone, Copy)]
struct Place<'a> {
    root: &'a Path,
    root_dev: u64,
    mounts: &'a HashSet<Vec<u8>>,
}

impl Place<'_> {
    /// Whether the entry `rel` (with metadata `md`) is, or is on, a mount.
    fn mounted(&self, rel: &[u8], md: &std::fs::Metadata) -> bool {
        md.dev() != self.root_dev || self.mounts.contains(rel)
    }
}

/// An entry the walk found: a directory's metadata is read by the walk,
/// which must know whether to go into it.
struct Walked {
    path: PathBuf,
    dir: Option<std::fs::Metadata>,
}

/// Walks `at.root` in a stable order (names sorted bytewise, parents
/// before children), handing each entry to `f`; a mounted directory is
/// handed over but not gone into.
fn walk(at: &Place<'_>, f: &mut dyn FnMut(Walked) -> Result<()>) -> Result<()> {
    let mut walker = walkdir::WalkDir::new(at.root)
        .follow_links(false)
        .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()))
        .into_iter();
    while let Some(entry) = walker.next() {
        let entry = entry.wrap_err_with(|| format!("walking {}", at.root.display()))?;
        if !entry.file_type().is_dir() {
            f(Walked {
                path: entry.into_path(),
                dir: None,
            })?;
            continue;
        }
        let md = entry
            .metadata()
            .wrap_err_with(|| format!("reading {}", entry.path().display()))?;
        let path = entry.into_path();
        let rel = path.strip_prefix(at.root).unwrap_or(&path).as_os_str().as_bytes();
        if at.mounted(rel, &md) {
            walker.skip_current_dir();
        }
        f(Walked { path, dir: Some(md) })?;
    }
    Ok(())
}

/// Reads one entry the walk found into `out`. What is mounted is kept as
/// its mount point: a directory without its contents or a file without
/// content. Sockets cannot be stored and are left out.
fn read_entry(at: &Place<'_>, walked: Walked, out: &mut Scan) -> Result<()> {
    let path = walked.path.as_path();
    let rel = path.strip_prefix(at.root).unwrap_or(path).as_os_str().as_bytes();
    let md = match walked.dir {
        Some(md) => md,
        None => std::fs::symlink_metadata(path).wrap_err_with(|| format!("reading {}", path.display()))?,
    };
    let mounted = at.mounted(rel, &md);
    let ft = md.file_type();
    if mounted && ft.is_dir() {
        log::debug!("leaving out what is mounted on {}", path.display());
    }
    // Any non-directory can have several names: files, symlinks, nodes.
    let link_group = (!ft.is_dir() && md.nlink() > 1 && !mounted).then(|| md.ino());
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
        return Ok(());
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
    out.push(rel, &meta, mounted, link_group)
}

#[cfg(test)]
mod tests {
    use super::*;

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
