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
    let handled = entries(chunks, f);
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
        let change = normalise(&mut entry, &mut global).wrap_err_with(|| format!("entry {}", show(&last)))?;
        if let Some(change) = change {
            let path = change.path().to_vec();
            f(change, &mut entry).wrap_err_with(|| format!("unpacking {}", show(&path)))?;
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
    // Old tars mark directories by a trailing slash on a plain entry.
    let legacy_dir = kind.as_byte() == b'\0' && raw_path.ends_with(b"/");
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
    let kind = match kind.as_byte() {
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
