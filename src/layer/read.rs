//! Reading a layer blob: one stream of normalised changes (entries with
//! their metadata, whiteouts, opaque markers), and the blob verified over its
//! whole length: its size against the descriptor, its digest, and the digest
//! of everything it decompresses to against the diff_id, trailing data
//! included. The caller's work counts only when [`read`] returns `Ok`.
//!
//! Decompression and the blob's hash run on a second thread, the hash of
//! what it decompresses to on a third, while the caller's thread handles
//! the entries.

use std::fs::File;
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use sha2::{Digest as _, Sha256};

use super::tarball::{Header, TarReader};
use super::{clean_path, show, split, EntryError, Kind, Meta, StackedLayer, OPAQUE, WHITEOUT};
use crate::oci::{self, DescriptorExt, Digest};

/// Chunks handed between the threads: large enough that handing them over
/// costs nothing measurable, small enough that the few in flight stay a
/// small part of a stash's memory.
const CHUNK: usize = 1 << 18;

/// One change a layer makes, in the order the layer has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create (or replace) the entry at `path`; a regular file's content is
    /// read from the reader handed along with it.
    Put {
        /// Clean path (the root is empty).
        path: Vec<u8>,
        /// Its metadata.
        meta: Meta,
    },
    /// A second name `path` for the entry at `target`.
    Link {
        /// Clean path of the new name.
        path: Vec<u8>,
        /// Clean path of the existing entry.
        target: Vec<u8>,
    },
    /// `.wh.NAME`: what lower layers have at `path` is gone.
    Whiteout(Vec<u8>),
    /// `.wh..wh..opq`: what lower layers have inside the directory is gone.
    Opaque(Vec<u8>),
}

impl Change {
    /// The path the change is about.
    pub fn path(&self) -> &[u8] {
        match self {
            Change::Put { path, .. } | Change::Link { path, .. } | Change::Whiteout(path) | Change::Opaque(path) => {
                path
            }
        }
    }
}

/// Reads the layer `l`, handing every change to `f` (with the content of a
/// regular file), and then checks the whole blob. An entry the product cannot
/// represent (an unknown type, a malformed number, a PAX record it cannot
/// parse) is an error that names the layer and the entry.
pub fn read(l: &StackedLayer, f: &mut dyn FnMut(Change, &mut dyn Read) -> Result<()>) -> Result<()> {
    let (chunks, worker) = open(l)?;
    // Errors are one line that names the layer and the entry.
    let handled = entries(chunks, f).map_err(|e| eyre!("layer {}: {e:#}", l.layer.digest()));
    // The worker has checked the blob once it ends; when the entries failed
    // first, their error is the one to report.
    let checked = worker
        .join()
        .map_err(|_| eyre!("the reader of layer {} panicked", l.layer.digest()))?;
    handled.and(checked)
}

/// Starts reading `l` on a second thread: decompressed, in chunks.
fn open(l: &StackedLayer) -> Result<(ChunkReader, thread::JoinHandle<Result<()>>)> {
    let digest = l.layer.sha256()?;
    let path = oci::blob_path(&l.layout, &digest);
    let file = File::open(&path).wrap_err_with(|| format!("opening layer {digest}"))?;
    let size = file
        .metadata()
        .wrap_err_with(|| format!("reading layer {digest}"))?
        .len();
    if size != l.layer.size() {
        bail!(
            "layer {digest} is corrupt: it is {size} bytes, its descriptor says {}",
            l.layer.size()
        );
    }
    let compression =
        oci::LayerCompression::of(l.layer.media_type()).wrap_err_with(|| format!("reading layer {digest}"))?;
    let diff_id = l.diff_id.clone();
    let (tx, rx) = sync_channel::<Arc<Vec<u8>>>(4);
    let worker = thread::spawn(move || -> Result<()> {
        let mut hashed = oci::HashingReader::new(io::BufReader::with_capacity(CHUNK, file));
        // The decompressed stream is hashed beside the decompression: on a
        // zstd layer the two take about as long, and the unpack waits for
        // the slower thread.
        let (to_hash, chunks) = sync_channel::<Arc<Vec<u8>>>(4);
        let hasher = thread::spawn(move || {
            let mut uncompressed = Sha256::new();
            for chunk in chunks {
                uncompressed.update(&*chunk);
            }
            Digest::from_hasher(uncompressed)
        });
        {
            let mut plain = oci::decompress(io::BufReader::new(&mut hashed), compression)?;
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let n = read_full(&mut plain, &mut chunk).wrap_err_with(|| format!("decompressing layer {digest}"))?;
                if n == 0 {
                    break;
                }
                chunk.truncate(n);
                let chunk = Arc::new(chunk);
                // Either send fails only once its receiver has stopped: the
                // entries failed, and their error is reported.
                if to_hash.send(chunk.clone()).is_err() || tx.send(chunk).is_err() {
                    return Ok(());
                }
            }
        }
        drop(to_hash);
        let uncompressed = hasher
            .join()
            .map_err(|_| eyre!("the hasher of layer {digest} panicked"))?;
        let rest = io::copy(&mut hashed, &mut io::sink()).wrap_err_with(|| format!("reading layer {digest}"))?;
        if rest > 0 {
            bail!("layer {digest} is corrupt: {rest} bytes follow its compressed stream");
        }
        let (got, read) = hashed.finish();
        if read != size {
            bail!("layer {digest} changed while it was read");
        }
        if got != digest {
            bail!("layer {digest} is corrupt: its content does not match its digest");
        }
        if uncompressed != diff_id {
            bail!("layer {digest} is corrupt: it does not decompress to its diff_id {diff_id}");
        }
        Ok(())
    });
    Ok((
        ChunkReader {
            rx,
            buf: Arc::default(),
            pos: 0,
        },
        worker,
    ))
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

struct ChunkReader {
    rx: Receiver<Arc<Vec<u8>>>,
    buf: Arc<Vec<u8>>,
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

/// Walks the tar stream, then reads what follows its end marker to the end,
/// so the worker hashes every byte.
fn entries(chunks: ChunkReader, f: &mut dyn FnMut(Change, &mut dyn Read) -> Result<()>) -> Result<()> {
    let mut tar = TarReader::new(chunks);
    let mut last: Option<Vec<u8>> = None;
    loop {
        let header = tar.next_entry().map_err(|e| match &last {
            None => e,
            Some(p) => eyre!("after {}: {e:#}", show(p)),
        })?;
        let Some(header) = header else { break };
        let change = normalise(&header).map_err(|e| eyre!("entry {}: {e:#}", show(&header.name)))?;
        f(change, &mut tar).map_err(|e| match e.downcast_ref::<EntryError>() {
            Some(_) => e,
            None => eyre!("{}: {e:#}", show(&clean_path(&header.name))),
        })?;
        last = Some(header.name);
    }
    tar.finish()?;
    Ok(())
}

/// One tar entry as a change.
fn normalise(h: &Header) -> Result<Change> {
    if h.name.contains(&0) {
        bail!("the name holds a NUL byte");
    }
    let path = clean_path(&h.name);
    let (dir, base) = split(&path);
    if base == OPAQUE {
        return Ok(Change::Opaque(dir.to_vec()));
    }
    if let Some(hidden) = base.strip_prefix(WHITEOUT) {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            bail!(
                "a whiteout of {:?} would reach outside its directory",
                String::from_utf8_lossy(hidden)
            );
        }
        return Ok(Change::Whiteout(super::join(dir, hidden)));
    }
    let link = || -> Result<Vec<u8>> {
        if h.linkname.is_empty() || h.linkname.contains(&0) {
            bail!("a link with an empty or NUL-holding target");
        }
        Ok(h.linkname.clone())
    };
    let (major, minor) = h.device;
    // Old tars mark directories by a trailing slash on a NUL-typed entry.
    let legacy_dir = h.flag == b'\0' && h.name.ends_with(b"/");
    let kind = match h.flag {
        _ if legacy_dir => Kind::Dir,
        b'0' | b'\0' => Kind::File { size: h.size },
        b'5' => Kind::Dir,
        b'2' => Kind::Symlink { target: link()? },
        b'3' => Kind::Char { major, minor },
        b'4' => Kind::Block { major, minor },
        b'6' => Kind::Fifo,
        b'1' => {
            let target = clean_path(&link()?);
            if target.is_empty() {
                bail!("a hard link to the root directory");
            }
            return Ok(Change::Link { path, target });
        }
        other => bail!(
            "its type {:?} is not one a root tree can hold (file, directory, link, device, fifo)",
            other as char
        ),
    };
    if path.is_empty() && kind != Kind::Dir {
        bail!("the root of the tree must be a directory, not a {}", kind.word());
    }
    Ok(Change::Put {
        path,
        meta: Meta {
            kind,
            mode: h.mode & 0o7777,
            uid: h.uid,
            gid: h.gid,
            mtime: h.mtime,
            xattrs: h.xattrs.clone(),
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::layer::Time;
    use crate::oci::{Descriptor, MediaType};

    /// A gzip layer of `tar` in a fresh layout; `tamper` may change the blob
    /// after its digest was taken.
    pub(crate) fn layer(dir: &std::path::Path, tar: &[u8], tamper: impl FnOnce(&mut Vec<u8>)) -> StackedLayer {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).unwrap();
        let mut blob = gz.finish().unwrap();
        let digest = Digest::of(&blob);
        let size = blob.len() as u64;
        tamper(&mut blob);
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(oci::blob_path(dir, &digest), &blob).unwrap();
        StackedLayer {
            layout: dir.to_path_buf(),
            layer: Descriptor::new(MediaType::ImageLayerGzip, size, digest),
            diff_id: Digest::of(tar),
        }
    }

    pub(crate) fn header(name: &str, kind: u8, size: usize) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"13000000000");
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    pub(crate) fn tar_of(parts: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data) in parts {
            out.extend_from_slice(&header(name, *kind, data.len()));
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn changes(l: &StackedLayer) -> Result<Vec<Change>> {
        let mut out = Vec::new();
        read(l, &mut |c, _| {
            out.push(c);
            Ok(())
        })?;
        Ok(out)
    }

    pub(crate) fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            crate::layer::write::record(&mut out, k.as_bytes(), v.as_bytes());
        }
        out
    }

    #[test]
    fn every_byte_of_the_blob_is_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let mut tar = tar_of(&[("etc/hostname", b'0', b"host\n")]);
        assert_eq!(changes(&layer(&tmp.path().join("ok"), &tar, |_| {})).unwrap().len(), 1);
        // Data after the end marker counts for the diff_id...
        let clean = layer(&tmp.path().join("clean"), &tar, |_| {});
        tar.extend_from_slice(&vec![7u8; 3 << 20]);
        let mut trailing = layer(&tmp.path().join("trailing"), &tar, |_| {});
        trailing.diff_id = clean.diff_id.clone();
        let err = format!("{:#}", changes(&trailing).unwrap_err());
        assert!(err.contains("does not decompress to its diff_id"), "{err}");
        // ...and a blob changed after its digest was taken is refused.
        let tampered = layer(&tmp.path().join("tampered"), &tar, |b| {
            let n = b.len() - 12;
            b[n] ^= 1;
        });
        assert!(changes(&tampered).is_err());
        let longer = layer(&tmp.path().join("longer"), &tar, |b| b.extend_from_slice(b"junk"));
        let err = format!("{:#}", changes(&longer).unwrap_err());
        assert!(err.contains("its descriptor says"), "{err}");
    }

    #[test]
    fn pax_records_give_nanoseconds_owners_and_xattrs() {
        let tmp = tempfile::tempdir().unwrap();
        let global = pax(&[("comment", "from git archive"), ("mtime", "1600000000.5"), ("uid", "7")]);
        let local = pax(&[
            ("mtime", "1600000001.000000042"),
            ("SCHILY.xattr.user.k", "v"),
            ("gid", "3000000"),
        ]);
        let tar = tar_of(&[
            ("pax_global_header", b'g', &global),
            ("a", b'0', b""),
            ("PaxHeader", b'x', &local),
            ("b", b'0', b""),
        ]);
        let got = changes(&layer(tmp.path(), &tar, |_| {})).unwrap();
        let metas: Vec<&Meta> = got
            .iter()
            .map(|c| match c {
                Change::Put { meta, .. } => meta,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(metas.len(), 2, "a global header is never a file");
        assert_eq!(
            metas[0].mtime,
            Time {
                sec: 1_600_000_000,
                nsec: 500_000_000
            }
        );
        assert_eq!((metas[0].uid, metas[0].gid), (7, 0));
        assert_eq!(
            metas[1].mtime,
            Time {
                sec: 1_600_000_001,
                nsec: 42
            }
        );
        assert_eq!((metas[1].uid, metas[1].gid), (7, 3_000_000));
        assert_eq!(metas[1].xattrs, vec![(b"user.k".to_vec(), b"v".to_vec())]);
    }

    #[test]
    fn what_cannot_be_represented_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let mut bad_uid = header("etc/shadow", b'0', 0);
        bad_uid[108..115].copy_from_slice(b"00x0000");
        bad_uid[148..156].fill(b' ');
        let sum: u32 = bad_uid.iter().map(|&b| u32::from(b)).sum();
        bad_uid[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut malformed = bad_uid.to_vec();
        malformed.extend_from_slice(&[0u8; 1024]);
        let cases: [(&str, Vec<u8>, &str); 4] = [
            ("unknown type", tar_of(&[("dev/tape", b'V', b"")]), "/dev/tape"),
            ("contiguous file", tar_of(&[("x", b'7', b"")]), "/x"),
            ("malformed uid", malformed, "/etc/shadow"),
            (
                "bad pax",
                tar_of(&[("PaxHeader", b'x', b"99 mtime=x\n"), ("y", b'0', b"")]),
                "y",
            ),
        ];
        for (what, tar, name) in cases {
            let err = changes(&layer(&tmp.path().join(what.replace(' ', "-")), &tar, |_| {})).unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains(name), "{what}: {text}");
        }
    }

    #[test]
    fn whiteouts_and_markers_are_events_not_files() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = tar_of(&[
            ("./etc/.wh.motd", b'0', b""),
            ("var/.wh..wh..opq", b'0', b""),
            ("image/../../x/.wh.y", b'0', b""),
        ]);
        let got = changes(&layer(tmp.path(), &tar, |_| {})).unwrap();
        assert_eq!(
            got,
            vec![
                Change::Whiteout(b"etc/motd".to_vec()),
                Change::Opaque(b"var".to_vec()),
                Change::Whiteout(b"x/y".to_vec()),
            ]
        );
        for evil in [".wh..", ".wh...", "a/.wh."] {
            let tar = tar_of(&[(evil, b'0', b"")]);
            assert!(
                changes(&layer(&tmp.path().join(evil.replace('/', "_")), &tar, |_| {})).is_err(),
                "{evil}"
            );
        }
    }
}
