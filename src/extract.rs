//! Unpacks image layers into a root tree: whiteouts applied, directory
//! symlinks of lower layers kept (umoci's `--keep-dirlinks`), owners, modes,
//! devices, hard links, xattrs and times restored.
//!
//! Every path is resolved inside the root with openat2's `RESOLVE_IN_ROOT`,
//! so no entry of an image, however crafted, reaches outside it; the last
//! component is always acted on with *at calls that do not follow it.
//! Decompression and digest checking run on a second thread while this one
//! creates files.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use sha2::{Digest as _, Sha256};

use crate::oci::{self, Digest};
use crate::restore::StackedLayer;
use crate::tree::{clean_path, CompleteTar, OPAQUE, WHITEOUT};

const CHUNK: usize = 1 << 20;

/// Whether this kernel has openat2 (Linux 5.6 and later), which the
/// extractor needs to keep every path inside the root.
pub fn supported() -> bool {
    let probe = rfs::openat2(
        rfs::CWD,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    );
    !matches!(probe, Err(rustix::io::Errno::NOSYS))
}

/// Unpacks `layers`, lowest first, into `rootfs`, which must not exist.
pub fn unpack(layers: &[StackedLayer], rootfs: &Path) -> Result<()> {
    std::fs::create_dir(rootfs).wrap_err_with(|| format!("creating {}", rootfs.display()))?;
    let root = rfs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .wrap_err_with(|| format!("opening {}", rootfs.display()))?;
    let mut x = Extractor {
        root,
        parents: HashMap::new(),
        dir_times: Vec::new(),
    };
    for l in layers {
        x.layer(l)
            .wrap_err_with(|| format!("unpacking layer {}", l.layer.digest))?;
    }
    x.finish()
}

/// Reads a blob on a second thread: decompressed, in chunks, its digests checked.
fn decompressed(l: &StackedLayer) -> Result<(ChunkReader, thread::JoinHandle<Result<()>>)> {
    let file = File::open(oci::blob_path(&l.layout, &l.layer.digest))?;
    let compression = oci::LayerCompression::of(&l.layer.media_type);
    let (digest, diff_id) = (l.layer.digest.clone(), l.diff_id.clone());
    let (tx, rx) = sync_channel::<Vec<u8>>(4);
    let worker = thread::spawn(move || -> Result<()> {
        let mut hashed = oci::HashingReader::new(io::BufReader::with_capacity(CHUNK, file));
        let mut uncompressed = Sha256::new();
        {
            let mut plain = oci::decompress(io::BufReader::new(&mut hashed), compression)?;
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let n = read_full(&mut plain, &mut chunk)?;
                if n == 0 {
                    break;
                }
                chunk.truncate(n);
                uncompressed.update(&chunk);
                if tx.send(chunk).is_err() {
                    return Ok(()); // the extractor stopped; its error is the one to report
                }
            }
        }
        io::copy(&mut hashed, &mut io::sink())?;
        if hashed.digest() != digest {
            bail!("layer {digest} is corrupt: its content does not match its digest");
        }
        if Digest::from_hasher(uncompressed) != diff_id {
            bail!("layer {digest} does not decompress to its diff_id {diff_id}");
        }
        Ok(())
    });
    Ok((
        ChunkReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        },
        worker,
    ))
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct Extractor {
    root: OwnedFd,
    /// Directories opened so far (O_PATH), by path inside the root.
    parents: HashMap<Vec<u8>, OwnedFd>,
    /// Directories whose times are set last: creating entries in them
    /// changes their mtime.
    dir_times: Vec<(Vec<u8>, u64)>,
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

impl Extractor {
    fn layer(&mut self, l: &StackedLayer) -> Result<()> {
        let (reader, worker) = decompressed(l)?;
        let result = self.entries(reader);
        let checked = worker.join().map_err(|_| eyre!("the layer reader panicked"))?;
        result.and(checked)
    }

    fn entries(&mut self, reader: ChunkReader) -> Result<()> {
        let mut archive = tar::Archive::new(CompleteTar::new(reader));
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = clean_path(&entry.path_bytes());
            if path.is_empty() || path.split(|&b| b == b'/').any(|c| c == b".." || c == b".") {
                continue;
            }
            self.entry(&path, &mut entry)
                .wrap_err_with(|| format!("unpacking {}", String::from_utf8_lossy(&path)))?;
        }
        Ok(())
    }

    /// The directory `dir` inside the root, created (0755) where missing.
    fn parent(&mut self, dir: &[u8]) -> Result<&OwnedFd> {
        if !self.parents.contains_key(dir) {
            let fd = match self.resolve(dir) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    let (up, name) = split(dir);
                    let up = self.parent(up)?.as_fd();
                    match rfs::mkdirat(up, os(name), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    self.resolve(dir)?
                }
                Err(e) => return Err(e.into()),
            };
            self.parents.insert(dir.to_vec(), fd);
        }
        Ok(&self.parents[dir])
    }

    fn resolve(&self, path: &[u8]) -> rustix::io::Result<OwnedFd> {
        let path = if path.is_empty() { b".".as_slice() } else { path };
        rfs::openat2(
            &self.root,
            os(path),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    fn entry<R: Read>(&mut self, path: &[u8], entry: &mut tar::Entry<R>) -> Result<()> {
        let (dir, name) = split(path);
        if name == OPAQUE {
            let parent = self.parent(dir)?.try_clone()?;
            self.forget_below(dir);
            return clear_dir(&parent);
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            return self.whiteout(dir, hidden);
        }
        let meta = Meta::of(entry)?;
        let parent = self.parent(dir)?.try_clone()?;
        let existing = rfs::statat(&parent, os(name), AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|s| FileType::from_raw_mode(s.st_mode));
        if meta.kind == tar::EntryType::Directory {
            return self.directory(path, &parent, name, existing, &meta);
        }
        if existing.is_some() {
            self.forget_below(path);
            remove_at(&parent, name)?;
        }
        match meta.kind {
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| eyre!("symlink without a target"))?
                    .into_owned();
                rfs::symlinkat(os(&target), &parent, os(name))?;
                set_meta_at(&parent, name, &meta, false)?;
            }
            tar::EntryType::Link => {
                let target = clean_path(
                    &entry
                        .link_name_bytes()
                        .ok_or_else(|| eyre!("hard link without a target"))?,
                );
                let (tdir, tname) = split(&target);
                let tparent = self.resolve(tdir)?;
                rfs::linkat(&tparent, os(tname), &parent, os(name), AtFlags::empty())?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match meta.kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                rfs::mknodat(&parent, os(name), ft, Mode::from_raw_mode(0o600), meta.device)?;
                set_meta_at(&parent, name, &meta, true)?;
            }
            _ => {
                let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let mut file = File::from(rfs::openat(&parent, os(name), flags, Mode::from_raw_mode(0o600))?);
                io::copy(entry, &mut file)?;
                file.flush()?;
                set_owner_mode_xattrs(&file, &meta)?;
                rfs::futimens(&file, &times(meta.mtime))?;
            }
        }
        Ok(())
    }

    /// `.wh.NAME` in `dir`: removes NAME, whatever it is.
    fn whiteout(&mut self, dir: &[u8], hidden: &[u8]) -> Result<()> {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            bail!(
                "a whiteout of {:?} would reach outside its directory",
                String::from_utf8_lossy(hidden)
            );
        }
        let parent = self.parent(dir)?.try_clone()?;
        let mut victim = dir.to_vec();
        if !victim.is_empty() {
            victim.push(b'/');
        }
        victim.extend_from_slice(hidden);
        self.forget_below(&victim);
        remove_at(&parent, hidden)
    }

    /// A directory entry: made, or kept where it exists, its metadata set;
    /// a lower layer's symlink to a directory is left alone (keep-dirlinks).
    fn directory(
        &mut self,
        path: &[u8],
        parent: &OwnedFd,
        name: &[u8],
        existing: Option<FileType>,
        meta: &Meta,
    ) -> Result<()> {
        match existing {
            Some(FileType::Directory) => {}
            Some(FileType::Symlink) if self.resolve(path).is_ok() => return Ok(()),
            Some(_) => {
                self.forget_below(path);
                remove_at(parent, name)?;
                rfs::mkdirat(parent, os(name), Mode::from_raw_mode(0o700))?;
            }
            None => rfs::mkdirat(parent, os(name), Mode::from_raw_mode(0o700))?,
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(parent, os(name), flags, Mode::empty())?;
        set_owner_mode_xattrs(&fd, meta)?;
        self.dir_times.push((path.to_vec(), meta.mtime));
        Ok(())
    }

    /// Drops cached directory handles at or below `path`: it is being removed.
    fn forget_below(&mut self, path: &[u8]) {
        let prefix = [path, b"/"].concat();
        self.parents.retain(|k, _| k != path && !k.starts_with(&prefix));
    }

    /// Sets the times of directories, deepest first.
    fn finish(mut self) -> Result<()> {
        self.dir_times.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        for (path, mtime) in std::mem::take(&mut self.dir_times) {
            if let Ok(fd) = rfs::openat2(
                &self.root,
                os(&path),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS,
            ) {
                rfs::futimens(&fd, &times(mtime))?;
            }
        }
        Ok(())
    }
}

/// What a tar header says about an entry, besides its name and content.
struct Meta {
    kind: tar::EntryType,
    mode: u32,
    uid: rustix::fs::Uid,
    gid: rustix::fs::Gid,
    mtime: u64,
    device: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn of<R: Read>(entry: &mut tar::Entry<R>) -> Result<Meta> {
        let xattrs = match entry.pax_extensions()? {
            Some(pax) => pax
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    Some((
                        e.key_bytes().strip_prefix(b"SCHILY.xattr.")?.to_vec(),
                        e.value_bytes().to_vec(),
                    ))
                })
                .collect(),
            None => Vec::new(),
        };
        let h = entry.header();
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        Ok(Meta {
            kind: h.entry_type(),
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            uid: uid_of(h.uid().unwrap_or(0) as u32),
            gid: gid_of(h.gid().unwrap_or(0) as u32),
            mtime: h.mtime().unwrap_or(0),
            device: rfs::makedev(major, minor),
            xattrs,
        })
    }
}

/// Owner, then mode (`chmod`, not for symlinks), xattrs and times of the
/// entry `name` in `parent`, without following it.
fn set_meta_at(parent: &OwnedFd, name: &[u8], meta: &Meta, chmod: bool) -> Result<()> {
    rfs::chownat(
        parent,
        os(name),
        Some(meta.uid),
        Some(meta.gid),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if chmod {
        rfs::chmodat(parent, os(name), Mode::from_raw_mode(meta.mode), AtFlags::empty())?;
    }
    // lsetxattr does not follow the last component of this path.
    let at = format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(parent));
    let full = [at.as_bytes(), name].concat();
    for (k, v) in &meta.xattrs {
        match rfs::lsetxattr(os(&full), os(k), v, rfs::XattrFlags::empty()) {
            Ok(()) => {}
            // The kernel allows few xattr namespaces on symlinks.
            Err(e) if !chmod => log::debug!("xattr {} of a symlink not set: {e}", String::from_utf8_lossy(k)),
            Err(e) => return Err(e.into()),
        }
    }
    rfs::utimensat(parent, os(name), &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn uid_of(uid: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(uid)
}

fn gid_of(gid: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(gid)
}

/// Owner first (chown clears setuid bits and security.capability), then
/// mode, then xattrs.
fn set_owner_mode_xattrs<Fd: AsFd>(fd: Fd, meta: &Meta) -> Result<()> {
    rfs::fchown(&fd, Some(meta.uid), Some(meta.gid))?;
    rfs::fchmod(&fd, Mode::from_raw_mode(meta.mode))?;
    for (k, v) in &meta.xattrs {
        rfs::fsetxattr(&fd, os(k), v, rfs::XattrFlags::empty())?;
    }
    Ok(())
}

/// Removes `name` in the directory `parent`, whatever it is, a whole tree
/// included; nothing there is followed.
fn remove_at(parent: &OwnedFd, name: &[u8]) -> Result<()> {
    match rfs::unlinkat(parent, os(name), AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(rustix::io::Errno::ISDIR) => {
            let dir = rfs::openat(
                parent,
                os(name),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            clear_dir(&dir)?;
            rfs::unlinkat(parent, os(name), AtFlags::REMOVEDIR)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes everything inside the directory `dir`.
fn clear_dir(dir: &OwnedFd) -> Result<()> {
    let readable = rfs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(&readable)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    for name in names {
        remove_at(&readable, &name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Descriptor;

    /// A one-layer image in a temp layout, its entries written by `fill`.
    fn layer(dir: &Path, fill: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> StackedLayer {
        let mut b = tar::Builder::new(Vec::new());
        fill(&mut b);
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let digest = Digest::of(&blob);
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(oci::blob_path(dir, &digest), &blob).unwrap();
        StackedLayer {
            layout: dir.to_path_buf(),
            layer: Descriptor {
                media_type: oci::MEDIA_LAYER_GZIP.into(),
                digest,
                size: blob.len() as u64,
                annotations: Default::default(),
                platform: None,
            },
            diff_id: Digest::of(&tar),
        }
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut h, path, target).unwrap();
    }

    #[test]
    fn nothing_reaches_outside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "keep").unwrap();
        for (link, target) in [("abs", outside.to_str().unwrap()), ("rel", "../../outside")] {
            let l = layer(&tmp.path().join(format!("layout-{link}")), |b| {
                symlink(b, link, target);
                file(b, &format!("{link}/evil"), b"x");
            });
            // Refusing is fine; writing outside is not.
            let _ = unpack(&[l], &tmp.path().join(format!("rootfs-{link}")));
            assert!(!outside.join("evil").exists(), "a write through {link} left the root");
        }
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layer(&tmp.path().join("layout"), |b| {
            file(b, "usr/lib/a", b"a");
            symlink(b, "lib", "/usr/lib");
            file(b, "lib/b", b"b");
        });
        let root = tmp.path().join("rootfs");
        unpack(&[l], &root).unwrap();
        assert_eq!(std::fs::read(root.join("usr/lib/b")).unwrap(), b"b");
        assert!(std::fs::symlink_metadata(root.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_whiteout_of_dot_dot_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("sibling"), "stays").unwrap();
        let l = layer(&tmp.path().join("layout"), |b| file(b, ".wh..", b""));
        let root = tmp.path().join("rootfs");
        assert!(unpack(&[l], &root).is_err());
        assert!(
            tmp.path().join("sibling").exists(),
            "the whiteout removed files beside the root"
        );
    }
}
