//! Writes a root tree, or what changed in it since a lower tree, as one
//! gzip-compressed tar layer blob, in one pass over the files.
//!
//! The tar stream is built and hashed on this thread while a second thread
//! compresses, hashes and writes it, so reading and compressing overlap.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;

use color_eyre::eyre::{eyre, Result, WrapErr};
use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};

use crate::oci::{Digest, HashingWriter};
use crate::tree::{Kind, Meta, Scanned, Tree, WHITEOUT};

const CHUNK: usize = 1 << 20;

/// A layer blob written into a layout's `blobs/sha256`.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar (the config's diff_id).
    pub diff_id: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// Entries written (whiteouts included).
    pub entries: usize,
    /// Whiteouts written.
    pub whiteouts: usize,
}

/// What a delta layer must carry to turn `lower` into the scanned tree.
pub struct Plan<'a> {
    /// Paths of lower entries that are gone, as whiteouts.
    pub whiteouts: Vec<Vec<u8>>,
    /// Entries to write, in walk order.
    pub entries: Vec<&'a Scanned>,
}

fn parent_of(path: &[u8]) -> &[u8] {
    path.iter()
        .rposition(|&b| b == b'/')
        .map_or(b"".as_slice(), |i| &path[..i])
}

/// Compares the scanned tree with `lower` (empty for a first layer): changed
/// and new entries are written, vanished ones whited out. A hard-link group
/// is written whole when any of its names changed.
pub fn plan<'a>(scanned: &'a [Scanned], lower: &Tree) -> Plan<'a> {
    let changed = |s: &Scanned| lower.get(&s.path) != Some(&s.meta);
    let dirty_groups: HashSet<(u64, u64)> = scanned
        .iter()
        .filter(|s| changed(s))
        .filter_map(|s| s.link_group)
        .collect();
    let entries: Vec<&Scanned> = scanned
        .iter()
        .filter(|s| changed(s) || s.link_group.is_some_and(|g| dirty_groups.contains(&g)))
        .collect();
    // Every scanned path, and whether it is a directory now.
    let new_kind: std::collections::HashMap<&[u8], bool> = scanned
        .iter()
        .map(|s| (s.path.as_slice(), s.meta.kind == Kind::Dir))
        .collect();
    let mut whiteouts = BTreeSet::new();
    for (path, meta) in lower {
        let gone = !new_kind.contains_key(path.as_slice());
        let dir_replaced = meta.kind == Kind::Dir && new_kind.get(path.as_slice()) == Some(&false);
        if !(gone || dir_replaced) {
            continue;
        }
        // A vanished entry needs its own whiteout only where its parent lives on
        // as the same directory; otherwise the parent's whiteout covers it.
        let parent = parent_of(path);
        let parent_lives = parent.is_empty()
            || (new_kind.get(parent) == Some(&true) && lower.get(parent).is_some_and(|m| m.kind == Kind::Dir));
        if parent_lives {
            whiteouts.insert(path.clone());
        }
    }
    Plan {
        whiteouts: whiteouts.into_iter().collect(),
        entries,
    }
}

/// Writes the planned layer into `blob_dir` (a layout's `blobs/sha256`).
pub fn write(plan: &Plan<'_>, blob_dir: &Path, level: u32) -> Result<Layer> {
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-layer-")
        .permissions(crate::store::readable())
        .tempfile_in(blob_dir)
        .wrap_err_with(|| format!("creating a layer in {}", blob_dir.display()))?;
    let file = tmp.as_file().try_clone().wrap_err("opening the new layer")?;
    let (tx, rx) = sync_channel::<Vec<u8>>(4);
    let compressor = thread::spawn(move || compress(rx, file, level));
    let total: u64 = plan
        .entries
        .iter()
        .map(|s| if let Kind::File { size } = s.meta.kind { size } else { 0 })
        .sum();
    let progress = crate::progress::bytes(total, "storing");
    let mut sink = ChunkSink {
        tx: Some(tx),
        buf: Vec::with_capacity(CHUNK),
        hash: Sha256::new(),
        progress,
    };
    let written = write_tar(plan, &mut sink);
    sink.flush_chunk();
    sink.progress.finish_and_clear();
    let diff_id = Digest::from_hasher(std::mem::take(&mut sink.hash));
    drop(sink);
    let compressed = compressor.join().map_err(|_| eyre!("the layer compressor panicked"))?;
    let (digest, size) = compressed.wrap_err("compressing the layer")?;
    let (entries, whiteouts) = written?;
    let dest = blob_dir.join(digest.hex());
    tmp.persist(&dest).wrap_err_with(|| format!("storing layer {digest}"))?;
    Ok(Layer {
        digest,
        diff_id,
        size,
        entries,
        whiteouts,
    })
}

struct ChunkSink {
    tx: Option<SyncSender<Vec<u8>>>,
    buf: Vec<u8>,
    hash: Sha256,
    progress: indicatif::ProgressBar,
}

impl ChunkSink {
    fn flush_chunk(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.hash.update(&chunk);
        self.progress.inc(chunk.len() as u64);
        // A send fails only when the compressor has stopped; its error is reported.
        if let Some(tx) = &self.tx {
            if tx.send(chunk).is_err() {
                self.tx = None;
            }
        }
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.tx.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the layer compressor stopped",
            ));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush_chunk();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn compress(rx: Receiver<Vec<u8>>, file: File, level: u32) -> Result<(Digest, u64)> {
    let out = HashingWriter::new(BufWriter::with_capacity(CHUNK, file));
    let mut gz = GzEncoder::new(out, flate2::Compression::new(level));
    for chunk in rx {
        gz.write_all(&chunk)?;
    }
    let (file, digest, size) = gz.finish()?.finish()?;
    file.get_ref().sync_all()?;
    Ok((digest, size))
}

fn header_for(meta: &Meta) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(meta.mode);
    h.set_uid(meta.uid);
    h.set_gid(meta.gid);
    h.set_mtime(meta.mtime.max(0) as u64);
    h.set_size(0);
    let kind = match &meta.kind {
        Kind::File { size } => {
            h.set_size(*size);
            tar::EntryType::Regular
        }
        Kind::HardLink { .. } => tar::EntryType::Link,
        Kind::Dir => tar::EntryType::Directory,
        Kind::Symlink { .. } => tar::EntryType::Symlink,
        Kind::Char { .. } => tar::EntryType::Char,
        Kind::Block { .. } => tar::EntryType::Block,
        Kind::Fifo => tar::EntryType::Fifo,
    };
    h.set_entry_type(kind);
    if let Kind::Char { major, minor } | Kind::Block { major, minor } = meta.kind {
        // GNU headers always have room for device numbers.
        let _ = h.set_device_major(major);
        let _ = h.set_device_minor(minor);
    }
    h
}

fn write_tar(plan: &Plan<'_>, sink: &mut ChunkSink) -> Result<(usize, usize)> {
    let mut tar = tar::Builder::new(sink);
    // Whiteouts come first: an entry that replaces a whited-out directory in
    // this same layer must not be hidden by it.
    for path in &plan.whiteouts {
        let (parent, base) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => (b"".as_slice(), path.as_slice()),
        };
        let name = [parent, WHITEOUT, base].concat();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        tar.append_data(&mut h, std::ffi::OsStr::from_bytes(&name), io::empty())?;
    }
    for s in &plan.entries {
        append_entry(&mut tar, s).wrap_err_with(|| format!("adding {} to the layer", s.source.display()))?;
    }
    tar.finish()?;
    Ok((plan.whiteouts.len() + plan.entries.len(), plan.whiteouts.len()))
}

fn append_entry(tar: &mut tar::Builder<&mut ChunkSink>, s: &Scanned) -> Result<()> {
    let xattrs: Vec<(String, &[u8])> = s
        .meta
        .xattrs
        .iter()
        .filter_map(|(k, v)| Some((format!("SCHILY.xattr.{}", std::str::from_utf8(k).ok()?), v.as_slice())))
        .collect();
    if !xattrs.is_empty() {
        tar.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), *v)))?;
    }
    let mut h = header_for(&s.meta);
    let path = std::ffi::OsStr::from_bytes(&s.path);
    match &s.meta.kind {
        Kind::File { size } => {
            let f = File::open(&s.source)?;
            // A file that grows while we read must not corrupt the archive.
            let reader = io::Read::take(f, *size);
            let mut counted = CountingReader { inner: reader, n: 0 };
            tar.append_data(&mut h, path, &mut counted)?;
            if counted.n != *size {
                return Err(eyre!("{} changed size while it was stored", s.source.display()));
            }
        }
        Kind::HardLink { target } | Kind::Symlink { target } => {
            tar.append_link(&mut h, path, std::ffi::OsStr::from_bytes(target))?;
        }
        _ => tar.append_data(&mut h, path, io::empty())?,
    }
    Ok(())
}

struct CountingReader<R> {
    inner: R,
    n: u64,
}

impl<R: io::Read> io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}
