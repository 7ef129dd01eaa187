//! Reading a layer blob: one stream of normalised changes (entries with
//! their metadata, whiteouts, opaque markers), and the blob verified over its
//! whole length: its size against the descriptor, its digest, and the digest
//! of everything it decompresses to against the diff_id, trailing data
//! included. The caller's work counts only when [`read`] returns `Ok`.
//!
//! Decompression and hashing run on a second thread while the caller's
//! thread handles the entries.

use std::fs::File;
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use sha2::{Digest as _, Sha256};

use super::{clean_path, show, split, Kind, Meta, StackedLayer, Time, OPAQUE, WHITEOUT};
use crate::oci::{self, Digest};

const CHUNK: usize = 1 << 20;

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
    let handled = entries(chunks, f).map_err(|e| eyre!("layer {}: {e:#}", l.layer.digest));
    // The worker has checked the blob once it ends; when the entries failed
    // first, their error is the one to report.
    let checked = worker
        .join()
        .map_err(|_| eyre!("the reader of layer {} panicked", l.layer.digest))?;
    handled.and(checked)
}

/// Starts reading `l` on a second thread: decompressed, in chunks.
fn open(l: &StackedLayer) -> Result<(ChunkReader, thread::JoinHandle<Result<()>>)> {
    let digest = l.layer.digest.clone();
    let path = oci::blob_path(&l.layout, &digest);
    let file = File::open(&path).wrap_err_with(|| format!("opening layer {digest}"))?;
    let size = file
        .metadata()
        .wrap_err_with(|| format!("reading layer {digest}"))?
        .len();
    if size != l.layer.size {
        bail!(
            "layer {digest} is corrupt: it is {size} bytes, its descriptor says {}",
            l.layer.size
        );
    }
    let compression = oci::LayerCompression::of(&l.layer.media_type);
    let diff_id = l.diff_id.clone();
    let (tx, rx) = sync_channel::<Vec<u8>>(4);
    let worker = thread::spawn(move || -> Result<()> {
        let mut hashed = oci::HashingReader::new(io::BufReader::with_capacity(CHUNK, file));
        let mut uncompressed = Sha256::new();
        {
            let mut plain = oci::decompress(io::BufReader::new(&mut hashed), compression)?;
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let n = read_full(&mut plain, &mut chunk).wrap_err_with(|| format!("decompressing layer {digest}"))?;
                if n == 0 {
                    break;
                }
                chunk.truncate(n);
                uncompressed.update(&chunk);
                if tx.send(chunk).is_err() {
                    // The entries failed; their error is reported.
                    return Ok(());
                }
            }
        }
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
        if Digest::from_hasher(uncompressed) != diff_id {
            bail!("layer {digest} is corrupt: it does not decompress to its diff_id {diff_id}");
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

/// Walks the tar stream, then reads what follows its end marker to the end,
/// so the worker hashes every byte.
fn entries(chunks: ChunkReader, f: &mut dyn FnMut(Change, &mut dyn Read) -> Result<()>) -> Result<()> {
    let mut archive = tar::Archive::new(CompleteTar::new(chunks));
    let mut global = Records::default();
    let mut last = Vec::new();
    for entry in archive.entries().wrap_err("reading the layer")? {
        let mut entry = entry.wrap_err_with(|| match last.is_empty() {
            true => "reading the first entry of the layer".to_string(),
            false => format!("reading the entry after {}", show(&last)),
        })?;
        last = entry.path_bytes().into_owned();
        let change = normalise(&mut entry, &mut global).map_err(|e| eyre!("entry {}: {e:#}", show(&last)))?;
        if let Some(change) = change {
            let path = change.path().to_vec();
            f(change, &mut entry).map_err(|e| eyre!("{}: {e:#}", show(&path)))?;
        }
    }
    let mut rest = archive.into_inner();
    // A tar ends with two zero blocks; a zero block followed by anything
    // else is a broken archive (as Go's reader, and so umoci, says).
    let mut block = [0u8; 512];
    let n = read_full(&mut rest, &mut block)?;
    if block[..n].iter().any(|&b| b != 0) {
        bail!("the layer has data after a lone end-of-archive block: it is not a valid tar");
    }
    io::copy(&mut rest, &mut io::sink()).wrap_err("reading the end of the layer")?;
    Ok(())
}

/// PAX records that apply to an entry (from a global header, or its own).
#[derive(Debug, Clone, Default)]
struct Records {
    mtime: Option<Time>,
    uid: Option<u64>,
    gid: Option<u64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Records {
    fn parse<'a>(records: impl Iterator<Item = io::Result<tar::PaxExtension<'a>>>) -> Result<Records> {
        let mut out = Records::default();
        for ext in records {
            let ext = ext.map_err(|e| eyre!("a PAX record cannot be parsed: {e}"))?;
            let (key, value) = (ext.key_bytes(), ext.value_bytes());
            match key {
                b"mtime" => out.mtime = Some(pax_time(value)?),
                b"uid" => out.uid = Some(pax_number(key, value)?),
                b"gid" => out.gid = Some(pax_number(key, value)?),
                b"size" => {
                    pax_number(key, value)?;
                }
                k if k.starts_with(b"GNU.sparse.") => bail!("sparse files are not supported in layers"),
                k => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                        out.xattrs.retain(|(n, _)| n != name);
                        out.xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// `self` with `over`'s records taking precedence.
    fn overlaid(&self, over: Records) -> Records {
        let mut xattrs = self.xattrs.clone();
        for (k, v) in over.xattrs {
            xattrs.retain(|(n, _)| *n != k);
            xattrs.push((k, v));
        }
        Records {
            mtime: over.mtime.or(self.mtime),
            uid: over.uid.or(self.uid),
            gid: over.gid.or(self.gid),
            xattrs,
        }
    }
}

fn pax_number(key: &[u8], value: &[u8]) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            eyre!(
                "the PAX record {} is not a number: {:?}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value)
            )
        })
}

/// A PAX time: `[-]SECONDS[.FRACTION]`.
fn pax_time(value: &[u8]) -> Result<Time> {
    let bad = || eyre!("the PAX mtime {:?} is not a time", String::from_utf8_lossy(value));
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) {
        return Err(bad());
    }
    let sec: i64 = whole.parse().map_err(|_| bad())?;
    let nsec: u32 = format!("{:0<9}", &frac[..frac.len().min(9)])
        .parse()
        .map_err(|_| bad())?;
    Ok(match (negative, nsec) {
        (false, _) => Time { sec, nsec },
        (true, 0) => Time { sec: -sec, nsec: 0 },
        (true, n) => Time {
            sec: -sec - 1,
            nsec: 1_000_000_000 - n,
        },
    })
}

/// One tar entry as a change, or `None` for a header that only sets records.
fn normalise<R: Read>(entry: &mut tar::Entry<R>, global: &mut Records) -> Result<Option<Change>> {
    let h = entry.header().clone();
    let raw_path = entry.path_bytes().into_owned();
    if raw_path.contains(&0) {
        bail!("the name holds a NUL byte");
    }
    let kind = h.entry_type();
    if kind.is_pax_global_extensions() {
        // GNU tar applies a global header's records to every entry after it;
        // it is never a file.
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        *global = global.overlaid(Records::parse(tar::PaxExtensions::new(&data))?);
        return Ok(None);
    }
    let local = match entry.pax_extensions()? {
        Some(pax) => Records::parse(pax)?,
        None => Records::default(),
    };
    let records = global.overlaid(local);
    let path = clean_path(&raw_path);
    let (dir, base) = split(&path);
    // The tar crate reads both '0' and NUL as a regular file; old tars mark
    // directories by a trailing slash on a NUL-typed entry.
    let flag = h.as_bytes()[156];
    let legacy_dir = flag == b'\0' && raw_path.ends_with(b"/");
    if base == OPAQUE {
        return Ok(Some(Change::Opaque(dir.to_vec())));
    }
    if let Some(hidden) = base.strip_prefix(WHITEOUT) {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            bail!(
                "a whiteout of {:?} would reach outside its directory",
                String::from_utf8_lossy(hidden)
            );
        }
        return Ok(Some(Change::Whiteout(super::join(dir, hidden))));
    }
    let link = || -> Result<Vec<u8>> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| eyre!("a link without a target"))?;
        if target.is_empty() || target.contains(&0) {
            bail!("a link with an empty or NUL-holding target");
        }
        Ok(target.into_owned())
    };
    let device = || -> Result<(u32, u32)> {
        let major = h.device_major().wrap_err("the device major number is malformed")?;
        let minor = h.device_minor().wrap_err("the device minor number is malformed")?;
        Ok((major.unwrap_or(0), minor.unwrap_or(0)))
    };
    let kind = match flag {
        _ if legacy_dir => Kind::Dir,
        b'0' | b'\0' => Kind::File { size: entry.size() },
        b'5' => Kind::Dir,
        b'2' => Kind::Symlink { target: link()? },
        b'3' => {
            let (major, minor) = device()?;
            Kind::Char { major, minor }
        }
        b'4' => {
            let (major, minor) = device()?;
            Kind::Block { major, minor }
        }
        b'6' => Kind::Fifo,
        b'1' => {
            let target = clean_path(&link()?);
            if target.is_empty() {
                bail!("a hard link to the root directory");
            }
            return Ok(Some(Change::Link { path, target }));
        }
        other => bail!(
            "its type {:?} is not one a root tree can hold (file, directory, link, device, fifo)",
            other as char
        ),
    };
    if path.is_empty() && kind != Kind::Dir {
        bail!("the root of the tree must be a directory, not a {}", kind.word());
    }
    let mode = h.mode().wrap_err("the mode is malformed")? & 0o7777;
    let uid = match records.uid {
        Some(u) => u,
        None => h.uid().wrap_err("the owner (uid) is malformed")?,
    };
    let gid = match records.gid {
        Some(g) => g,
        None => h.gid().wrap_err("the group (gid) is malformed")?,
    };
    let mtime = match records.mtime {
        Some(t) => t,
        None => Time::secs(h.mtime().wrap_err("the mtime is malformed")? as i64),
    };
    let mut xattrs = records.xattrs;
    xattrs.sort();
    Ok(Some(Change::Put {
        path,
        meta: Meta {
            kind,
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        },
    }))
}

/// A tar stream completed where its writer stopped short: some writers
/// (umoci insert among them) end a layer without padding its last entry to a
/// 512-byte block and without the two zero blocks that end an archive.
/// After the stream ends this reader supplies both, so the tar reader sees a
/// well-formed archive. The zeros are not hashed: the diff_id is checked on
/// the bytes of the blob.
pub struct CompleteTar<R> {
    inner: R,
    read: u64,
    trailer: Option<u64>,
}

impl<R: Read> CompleteTar<R> {
    /// Wraps an uncompressed tar stream.
    pub fn new(inner: R) -> CompleteTar<R> {
        CompleteTar {
            inner,
            read: 0,
            trailer: None,
        }
    }
}

impl<R: Read> Read for CompleteTar<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.trailer.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.read += n as u64;
                return Ok(n);
            }
            self.trailer = Some((512 - self.read % 512) % 512 + 1024);
        }
        let left = self.trailer.get_or_insert(0);
        let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
        buf[..n].fill(0);
        *left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::oci::{Descriptor, MEDIA_LAYER_GZIP};

    /// A gzip layer of `tar` in a fresh layout; `tamper` may change the blob
    /// after its digest was taken.
    fn layer(dir: &std::path::Path, tar: &[u8], tamper: impl FnOnce(&mut Vec<u8>)) -> StackedLayer {
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
            layer: Descriptor {
                media_type: MEDIA_LAYER_GZIP.into(),
                digest,
                size,
                annotations: Default::default(),
                platform: None,
            },
            diff_id: Digest::of(tar),
        }
    }

    fn header(name: &str, kind: u8, size: usize) -> [u8; 512] {
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

    fn tar_of(parts: &[(&str, u8, &[u8])]) -> Vec<u8> {
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

    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
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

    #[test]
    fn pax_times_parse_before_and_after_the_epoch() {
        assert_eq!(
            pax_time(b"1.5").unwrap(),
            Time {
                sec: 1,
                nsec: 500_000_000
            }
        );
        assert_eq!(
            pax_time(b"-1.5").unwrap(),
            Time {
                sec: -2,
                nsec: 500_000_000
            }
        );
        assert_eq!(pax_time(b"-3").unwrap(), Time { sec: -3, nsec: 0 });
        assert_eq!(
            pax_time(b"7.1234567891").unwrap(),
            Time {
                sec: 7,
                nsec: 123_456_789
            }
        );
        for bad in ["", "x", "1.2.3", "1e5", "-"] {
            assert!(pax_time(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
