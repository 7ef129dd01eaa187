//! The root on disk as an [`apply::Target`]: the confined unpacker.
//!
//! Every path it is handed has been resolved by the applier, so it walks
//! them with `O_NOFOLLOW` from the root's own descriptor: a symlink met on
//! the way is an error, never followed, and nothing outside the root can be
//! reached or created. It needs no `openat2`. Directory handles are kept in
//! a small cache (a few dozen descriptors, whatever the tree's size, the
//! least recently used one closed first), dropped whenever what they name is
//! removed. Directory times are set last, since creating entries in a
//! directory changes them.
//!
//! A directory this unpack created holds only what it put there since, so
//! what is in it is known without asking the disk: a fresh root is written
//! with no `stat` of the entries it creates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::apply::{self, Node, Target};
use super::read::Change;
use super::{is_within, join, show, split, Kind, Meta, StackedLayer, Time, IGNORED_XATTRS};
use crate::fsutil::{kept_mode, Pieces};

mod writer;

/// Directory handles kept open at most; the rest are opened again on use.
const HANDLES: usize = 32;

/// How much of a large file's content is read at once, as much as a
/// decompressed chunk; it reaches the kernel in [`Pieces`].
const WRITE_BUFFER: usize = 1 << 20;

/// Unpacks `layers`, lowest first, into `rootfs`, which must not exist.
/// On any error nothing is left of `rootfs`.
pub fn unpack(layers: &[StackedLayer], rootfs: &Path) -> Result<()> {
    unpack_filtered(layers, rootfs, &mut |_| Ok(true))
}

/// Like [`unpack`], for the changes `keep` lets through (it may refuse some).
pub fn unpack_filtered(
    layers: &[StackedLayer],
    rootfs: &Path,
    keep: &mut dyn FnMut(&Change) -> Result<bool>,
) -> Result<()> {
    std::fs::create_dir(rootfs).wrap_err_with(|| format!("creating {}", rootfs.display()))?;
    unpack_into_filtered(layers, rootfs, keep)
}

/// Like [`unpack`], into `rootfs`, an empty directory that exists already.
/// It is opened once by its path, and never created: its creator may have
/// registered it for removal by an interrupt, which must not see it made
/// again (see `interrupt::create`).
pub fn unpack_into(layers: &[StackedLayer], rootfs: &Path) -> Result<()> {
    unpack_into_filtered(layers, rootfs, &mut |_| Ok(true))
}

fn unpack_into_filtered(
    layers: &[StackedLayer],
    rootfs: &Path,
    keep: &mut dyn FnMut(&Change) -> Result<bool>,
) -> Result<()> {
    let unpacked = Disk::open(rootfs).and_then(|mut disk| {
        apply::apply_layers(layers, &mut disk, keep)?;
        disk.finish()
    });
    if unpacked.is_err() {
        // std's remove_dir_all does not follow symlinks.
        let _ = std::fs::remove_dir_all(rootfs);
    }
    unpacked
}

/// A root directory on disk that layers are applied to.
pub struct Disk {
    root: Arc<OwnedFd>,
    /// Open directory handles and when each was last used.
    handles: HashMap<Vec<u8>, (Arc<OwnedFd>, u64)>,
    /// Counts uses of `handles`.
    clock: u64,
    dir_times: BTreeMap<Vec<u8>, Time>,
    /// Directories this unpack created (the root too, when it was empty):
    /// everything in them is in `known`.
    fresh: HashSet<Vec<u8>>,
    /// What is at each path inside a fresh directory.
    known: HashMap<Vec<u8>, Node>,
    /// Carries file contents from the layer to the disk.
    buffer: Vec<u8>,
    /// Writes files no larger than its budget behind the applier.
    writers: writer::Pool,
    /// Whether owners can be set (we run as root); without that, setuid and
    /// setgid bits are dropped, since they would go to a new owner.
    owners: bool,
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn times(t: Time) -> Timestamps {
    let t = Timespec {
        tv_sec: t.sec,
        tv_nsec: t.nsec.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

const DIR_PATH: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const DIR_READ: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Disk {
    /// The existing, empty directory `rootfs`: owned by root, 0755, its time
    /// the epoch until a root entry says otherwise (as umoci does).
    pub fn open(rootfs: &Path) -> Result<Disk> {
        let root =
            rfs::open(rootfs, DIR_READ, Mode::empty()).wrap_err_with(|| format!("opening {}", rootfs.display()))?;
        let owners = crate::fsutil::can_set_owners();
        if owners {
            rfs::fchown(&root, Some(rfs::Uid::ROOT), Some(rfs::Gid::ROOT))?;
        }
        rfs::fchmod(&root, Mode::from_raw_mode(0o755))?;
        let mut dir_times = BTreeMap::new();
        dir_times.insert(Vec::new(), Time::default());
        let mut fresh = HashSet::new();
        if is_empty(&root)? {
            fresh.insert(Vec::new());
        }
        Ok(Disk {
            root: Arc::new(root),
            handles: HashMap::new(),
            clock: 0,
            dir_times,
            fresh,
            known: HashMap::new(),
            buffer: Vec::new(),
            writers: writer::Pool::new(),
            owners,
        })
    }

    /// Notes that `path` is now `node`, when its parent is fresh; a new
    /// directory is fresh itself.
    fn created(&mut self, path: &[u8], node: Node) {
        if node == Node::Dir {
            self.fresh.insert(path.to_vec());
        }
        if self.fresh.contains(split(path).0) {
            self.known.insert(path.to_vec(), node);
        }
    }

    /// A handle on the directory `path`, walked from the nearest one known.
    fn dir(&mut self, path: &[u8]) -> Result<Arc<OwnedFd>> {
        if path.is_empty() {
            return Ok(self.root.clone());
        }
        self.clock += 1;
        if let Some((fd, used)) = self.handles.get_mut(path) {
            *used = self.clock;
            return Ok(fd.clone());
        }
        let (parent, name) = split(path);
        let parent = self.dir(parent)?;
        let fd = match rfs::openat(&*parent, os(name), DIR_PATH, Mode::empty()) {
            Ok(fd) => Arc::new(fd),
            Err(Errno::LOOP | Errno::NOTDIR) => bail!("{} is not a directory", show(path)),
            Err(e) => return Err(e).wrap_err_with(|| format!("opening {}", show(path))),
        };
        if self.handles.len() >= HANDLES {
            let oldest = self
                .handles
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.handles.remove(&k);
            }
        }
        self.handles.insert(path.to_vec(), (fd.clone(), self.clock));
        Ok(fd)
    }

    /// Drops what is known of `path` and below: it is gone.
    fn forget(&mut self, path: &[u8]) {
        self.handles.retain(|k, _| !is_within(k, path));
        self.fresh.retain(|k| !is_within(k, path));
        self.known.retain(|k, _| !is_within(k, path));
        let doomed: Vec<Vec<u8>> = self
            .dir_times
            .range(path.to_vec()..)
            .take_while(|(k, _)| k.starts_with(path))
            .filter(|(k, _)| is_within(k, path))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.dir_times.remove(&k);
        }
    }

    /// Owner, mode (unless a symlink), xattrs and times of the entry `name`
    /// in `parent`, not following it.
    fn set_meta_at(&self, parent: &OwnedFd, name: &[u8], meta: &Meta, chmod: bool) -> Result<()> {
        let mut mode = meta.mode;
        if self.owners {
            rfs::chownat(
                parent,
                os(name),
                Some(uid(meta.uid)?),
                Some(gid(meta.gid)?),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        } else {
            mode &= !0o6000;
        }
        if chmod {
            // The entry was just made by us and is no symlink.
            rfs::chmodat(parent, os(name), Mode::from_raw_mode(mode), AtFlags::empty())?;
        }
        // lsetxattr does not follow the last component of this path.
        let at = format!("/proc/self/fd/{}/", parent.as_raw_fd());
        let full = [at.as_bytes(), name].concat();
        for (k, v) in restorable(meta) {
            // The kernel refuses user.* xattrs on symlinks; umoci then fails, and so do we.
            rfs::lsetxattr(os(&full), os(k), v, rfs::XattrFlags::empty())
                .wrap_err_with(|| format!("setting xattr {}", String::from_utf8_lossy(k)))?;
        }
        rfs::utimensat(parent, os(name), &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// Sets the times of every directory, now that nothing more is created.
    pub fn finish(mut self) -> Result<()> {
        self.writers.settle()?;
        let dirs = std::mem::take(&mut self.dir_times);
        for (path, mtime) in dirs {
            if path.is_empty() {
                rfs::futimens(&*self.root, &times(mtime))?;
                continue;
            }
            let (parent, name) = split(&path);
            let parent = self.dir(parent)?;
            rfs::utimensat(&*parent, os(name), &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                .wrap_err_with(|| format!("setting the times of {}", show(&path)))?;
        }
        Ok(())
    }
}

/// Owner first (chown clears setuid bits and security.capability), then
/// mode and xattrs, of an open file or directory.
fn set_owner_mode_xattrs<Fd: AsFd>(fd: Fd, meta: &Meta, replace: bool, owners: bool) -> Result<()> {
    if owners {
        rfs::fchown(&fd, Some(uid(meta.uid)?), Some(gid(meta.gid)?))?;
    }
    rfs::fchmod(&fd, Mode::from_raw_mode(kept_mode(meta.mode, owners)))?;
    if replace {
        for name in list_xattrs(&fd)? {
            if !IGNORED_XATTRS.contains(&name.as_slice()) && !meta.xattrs.iter().any(|(k, _)| *k == name) {
                rfs::fremovexattr(&fd, os(&name))?;
            }
        }
    }
    for (k, v) in restorable(meta) {
        rfs::fsetxattr(&fd, os(k), v, rfs::XattrFlags::empty())
            .wrap_err_with(|| format!("setting xattr {}", String::from_utf8_lossy(k)))?;
    }
    Ok(())
}

/// What is at `name` in `parent`, asking the disk.
fn disk_node(parent: &OwnedFd, name: &[u8]) -> Result<Option<Node>> {
    let stat = match rfs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => s,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => Node::Dir,
        FileType::Symlink => Node::Symlink(rfs::readlinkat(parent, os(name), Vec::new())?.into_bytes()),
        _ => Node::Other,
    }))
}

fn is_empty(dir: &OwnedFd) -> Result<bool> {
    let readable = rfs::openat(dir, ".", DIR_READ, Mode::empty())?;
    for entry in rfs::Dir::read_from(&readable)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Copies all of `content` to `file` through `buffer`.
fn copy(content: &mut dyn Read, file: &mut File, buffer: &mut Vec<u8>) -> io::Result<u64> {
    buffer.resize(WRITE_BUFFER, 0);
    let mut copied = 0;
    loop {
        // Fill the buffer as far as the content goes, then write it at once.
        let mut n = 0;
        while n < buffer.len() {
            match content.read(&mut buffer[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            return Ok(copied);
        }
        Pieces(&mut *file).write_all(&buffer[..n])?;
        copied += n as u64;
    }
}

fn restorable(meta: &Meta) -> impl Iterator<Item = &(Vec<u8>, Vec<u8>)> {
    meta.xattrs
        .iter()
        .filter(|(k, _)| !IGNORED_XATTRS.contains(&k.as_slice()))
}

fn uid(id: u64) -> Result<rfs::Uid> {
    let id = u32::try_from(id).map_err(|_| eyre!("the owner {id} is too large"))?;
    Ok(rfs::Uid::from_raw(id))
}

fn gid(id: u64) -> Result<rfs::Gid> {
    let id = u32::try_from(id).map_err(|_| eyre!("the group {id} is too large"))?;
    Ok(rfs::Gid::from_raw(id))
}

fn list_xattrs<Fd: AsFd>(fd: Fd) -> Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match rfs::flistxattr(&fd, &mut buf[..]) {
            Ok(n) => {
                return Ok(buf[..n]
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect())
            }
            Err(Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
}

impl Target for Disk {
    fn settle(&mut self) -> Result<()> {
        self.writers.settle()
    }

    fn node(&mut self, path: &[u8]) -> Result<Option<Node>> {
        if path.is_empty() {
            return Ok(Some(Node::Dir));
        }
        if self.writers.is_pending(path) {
            return Ok(Some(Node::Other));
        }
        let (parent, name) = split(path);
        if self.fresh.contains(parent) {
            return Ok(self.known.get(path).cloned());
        }
        let parent = self.dir(parent)?;
        disk_node(&parent, name).wrap_err_with(|| format!("looking at {}", show(path)))
    }

    fn children(&mut self, dir: &[u8]) -> Result<Vec<Vec<u8>>> {
        // What is still being written must be on disk first.
        self.writers.settle()?;
        let fd = self.dir(dir)?;
        let readable = rfs::openat(&*fd, ".", DIR_READ, Mode::empty())?;
        let mut names = Vec::new();
        for entry in rfs::Dir::read_from(&readable)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        Ok(names)
    }

    fn remove(&mut self, path: &[u8]) -> Result<()> {
        // What is still being written must be on disk first.
        self.writers.settle()?;
        let (parent, name) = split(path);
        let fd = self.dir(parent)?;
        match rfs::unlinkat(&*fd, os(name), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::ISDIR | Errno::PERM) => {
                // No handle is held while the directory is emptied, however deep.
                drop(fd);
                for child in self.children(path)? {
                    self.remove(&join(path, &child))?;
                }
                let fd = self.dir(parent)?;
                rfs::unlinkat(&*fd, os(name), AtFlags::REMOVEDIR)
                    .wrap_err_with(|| format!("removing {}", show(path)))?;
            }
            Err(e) => return Err(e).wrap_err_with(|| format!("removing {}", show(path))),
        }
        self.forget(path);
        Ok(())
    }

    fn mkdir(&mut self, path: &[u8]) -> Result<()> {
        let (parent, name) = split(path);
        let fd = self.dir(parent)?;
        rfs::mkdirat(&*fd, os(name), Mode::from_raw_mode(0o755))
            .wrap_err_with(|| format!("creating {}", show(path)))?;
        self.created(path, Node::Dir);
        Ok(())
    }

    fn put(&mut self, path: &[u8], meta: &Meta, content: &mut dyn Read) -> Result<()> {
        let (parent, name) = split(path);
        let fd = self.dir(parent)?;
        match &meta.kind {
            Kind::File { size } if *size <= writer::BUDGET => {
                let mut data = Vec::with_capacity(*size as usize);
                let copied = content.take(*size).read_to_end(&mut data)? as u64;
                if copied != *size {
                    bail!("the layer holds {copied} of its {size} bytes");
                }
                self.writers.submit(writer::Job {
                    parent: fd.clone(),
                    path: path.to_vec(),
                    meta: meta.clone(),
                    data,
                    owners: self.owners,
                })?;
            }
            Kind::File { size } => {
                let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let mut file = File::from(rfs::openat(&*fd, os(name), flags, Mode::from_raw_mode(0o600))?);
                let copied = copy(content, &mut file, &mut self.buffer)?;
                if copied != *size {
                    bail!("the layer holds {copied} of its {size} bytes");
                }
                file.flush()?;
                set_owner_mode_xattrs(&file, meta, false, self.owners)?;
                rfs::futimens(&file, &times(meta.mtime))?;
            }
            Kind::Symlink { target } => {
                rfs::symlinkat(os(target), &*fd, os(name))?;
                self.set_meta_at(&fd, name, meta, false)?;
            }
            Kind::Char { major, minor } | Kind::Block { major, minor } => {
                let ft = match meta.kind {
                    Kind::Char { .. } => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                let dev = rfs::makedev(*major, *minor);
                rfs::mknodat(&*fd, os(name), ft, Mode::from_raw_mode(0o600), dev)?;
                self.set_meta_at(&fd, name, meta, true)?;
            }
            Kind::Fifo => {
                rfs::mknodat(&*fd, os(name), FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
                self.set_meta_at(&fd, name, meta, true)?;
            }
            Kind::Dir => unreachable!("directories are made by set_dir"),
        }
        let node = match &meta.kind {
            Kind::Symlink { target } => Node::Symlink(target.clone()),
            _ => Node::Other,
        };
        self.created(path, node);
        Ok(())
    }

    fn set_dir(&mut self, path: &[u8], meta: &Meta, exists: bool) -> Result<()> {
        let dir = if path.is_empty() {
            rfs::openat(&*self.root, ".", DIR_READ, Mode::empty())?
        } else {
            let (parent, name) = split(path);
            let fd = self.dir(parent)?;
            if !exists {
                rfs::mkdirat(&*fd, os(name), Mode::from_raw_mode(0o700))?;
            }
            let dir = rfs::openat(&*fd, os(name), DIR_READ, Mode::empty())?;
            if !exists {
                self.created(path, Node::Dir);
            }
            dir
        };
        set_owner_mode_xattrs(&dir, meta, exists, self.owners)?;
        self.dir_times.insert(path.to_vec(), meta.mtime);
        Ok(())
    }

    fn link(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
        // What is still being written must be on disk first.
        self.writers.settle()?;
        let (tparent, tname) = split(target);
        let tfd = self.dir(tparent)?;
        let (parent, name) = split(path);
        let fd = self.dir(parent)?;
        rfs::linkat(&*tfd, os(tname), &*fd, os(name), AtFlags::empty())
            .wrap_err_with(|| format!("linking to {}", show(target)))?;
        if self.fresh.contains(parent) {
            // A second name of whatever the target is (a symlink, too).
            let node = disk_node(&fd, name)?.ok_or_else(|| eyre!("{} vanished", show(path)))?;
            self.created(path, node);
        }
        Ok(())
    }

    fn keep_dirlink(&mut self, path: &[u8], meta: &Meta) -> Result<()> {
        // What is still being written must be on disk first.
        self.writers.settle()?;
        let (parent, name) = split(path);
        let fd = self.dir(parent)?;
        if self.owners {
            rfs::chownat(
                &*fd,
                os(name),
                Some(uid(meta.uid)?),
                Some(gid(meta.gid)?),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        rfs::utimensat(&*fd, os(name), &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::layer::read::tests::{header, layer, pax, tar_of};

    /// A link (`kind` 1 hard, 2 symbolic) `name` to `target`.
    fn linked(name: &str, kind: u8, target: &str) -> Vec<u8> {
        let mut h = header(name, kind, 0);
        h[157..157 + target.len()].copy_from_slice(target.as_bytes());
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h.to_vec()
    }

    /// `tar_of(parts)` with `extra` (whole blocks) before its end marker.
    fn with_blocks(parts: &[(&str, u8, &[u8])], extra: &[u8]) -> Vec<u8> {
        let mut tar = tar_of(parts);
        tar.truncate(tar.len() - 1024);
        tar.extend_from_slice(extra);
        tar.extend_from_slice(&[0u8; 1024]);
        tar
    }

    #[test]
    fn files_written_behind_the_applier_come_out_in_layer_order() {
        let tmp = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..writer::BUDGET as usize + 5000).map(|i| (i % 251) as u8).collect();
        let many: Vec<(String, Vec<u8>)> = (0..600)
            .map(|i| (format!("d/f{i}"), format!("{i}\n").into_bytes()))
            .collect();
        let mut parts: Vec<(&str, u8, &[u8])> = vec![
            ("a", b'0', b"first"),
            ("a", b'0', b"second"),
            ("b", b'0', b"linked"),
            ("big", b'0', &big),
        ];
        parts.extend(many.iter().map(|(n, d)| (n.as_str(), b'0', d.as_slice())));
        // A later entry for a path still being written, and a hard link to one.
        let tar = with_blocks(&parts, &[linked("d/f7", b'2', "f8"), linked("c", b'1', "b")].concat());
        let l = layer(&tmp.path().join("layout"), &tar, |_| {});
        let root = tmp.path().join("root");
        unpack(&[l], &root).unwrap();
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"second");
        let (b, c) = (root.join("b").metadata().unwrap(), root.join("c").metadata().unwrap());
        assert_eq!((b.ino(), b.nlink()), (c.ino(), 2));
        assert_eq!(std::fs::read(root.join("c")).unwrap(), b"linked");
        assert!(
            std::fs::read(root.join("big")).unwrap() == big,
            "the file larger than the budget differs"
        );
        for (name, data) in &many[8..] {
            assert_eq!(&std::fs::read(root.join(name)).unwrap(), data, "{name}");
        }
        assert_eq!(std::fs::read_link(root.join("d/f7")).unwrap(), Path::new("f8"));
        assert_eq!(root.join("a").metadata().unwrap().mode() & 0o7777, 0o644);
    }

    #[test]
    fn a_file_that_fails_behind_the_applier_is_named_and_the_root_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = pax(&[("SCHILY.xattr.bogus.name", "v")]);
        let tar = tar_of(&[
            ("PaxHeader", b'x', &bad),
            ("etc/bad", b'0', b"x"),
            ("etc/good", b'0', b"y"),
            ("usr", b'5', b""),
        ]);
        let l = layer(&tmp.path().join("layout"), &tar, |_| {});
        let root = tmp.path().join("root");
        let err = format!("{:#}", unpack(&[l], &root).unwrap_err());
        assert!(err.contains("/etc/bad: setting xattr bogus.name"), "{err}");
        assert!(!err.contains("good") && !err.contains("/usr"), "{err}");
        assert!(!root.exists());
    }
}
