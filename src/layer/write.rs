//! Writes a root tree, or what changed in it since a lower tree, as one
//! compressed tar layer blob, in one pass over the files.
//!
//! The tar stream is built and hashed on this thread while a second thread
//! hands it to the compressor ([`super::compress`], on every core), and
//! hashes and writes what comes out, so reading and compressing overlap.
//! Times keep their nanoseconds (PAX `mtime`), xattrs their raw names
//! (`SCHILY.xattr.*`), and the root directory is an entry (`./`) of its own.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use sha2::{Digest as _, Sha256};

use super::apply::Applier;
use super::compress::{self, Settings};
use super::read::Change;
use super::scan::Scan;
use super::tree::Tree;
use super::{show, split, Kind, Meta, WHITEOUT};
use crate::fsutil::Pieces;
use crate::oci::{Digest, HashingWriter};

/// Chunks handed between the threads: large enough that handing them over
/// costs nothing measurable, small enough that the few in flight stay a
/// small part of a stash's memory.
const CHUNK: usize = 1 << 18;

/// A tar block: every entry's content is padded to a whole one.
const BLOCK: usize = 512;

/// A layer blob as written.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar (the config's diff_id).
    pub diff_id: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// Its media type (the compression it was written with).
    pub media_type: crate::oci::MediaType,
    /// Entries written (whiteouts included).
    pub entries: usize,
    /// Whiteouts written.
    pub whiteouts: usize,
}

/// One thing a delta layer carries, in the order it is written; entries are
/// named by their index in the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// A lower entry that is gone, or whose type changed.
    Whiteout(Vec<u8>),
    /// An entry, with its content for a regular file.
    Entry(u32),
    /// A further name of a hard-linked file, and the entry written before it.
    Link(u32, u32),
}

/// What a delta layer must carry to turn a lower tree into the scanned one.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// The tree that was read.
    pub scan: &'a Scan,
    /// Whiteouts first, then entries in walk order.
    pub items: Vec<Planned>,
}

impl Plan<'_> {
    /// How many whiteouts the plan has.
    pub fn whiteouts(&self) -> usize {
        self.items.iter().filter(|i| matches!(i, Planned::Whiteout(_))).count()
    }

    /// One item as the change a reader of its layer will see.
    fn change(&self, item: &Planned) -> Change {
        match item {
            Planned::Whiteout(p) => Change::Whiteout(p.clone()),
            Planned::Entry(i) => Change::Put {
                path: self.scan.path(*i).to_vec(),
                meta: self.scan.meta(*i),
            },
            Planned::Link(i, first) => Change::Link {
                path: self.scan.path(*i).to_vec(),
                target: self.scan.path(*first).to_vec(),
            },
        }
    }

    /// Turns `tree` (the lower tree) as the planned layer turns it, by the
    /// rules every reader of the layer applies: the tree to cache for the image.
    pub fn apply_to(&self, tree: &mut Tree) -> Result<()> {
        let mut applier = Applier::new(tree).whiteouts_first();
        for item in &self.items {
            let change = self.change(item);
            applier
                .apply(&change, &mut io::empty())
                .wrap_err_with(|| format!("planning {}", show(change.path())))?;
        }
        Ok(())
    }
}

/// Compares the scanned tree with `lower` (empty for a first layer). New and
/// changed entries are written; a lower entry that is gone, or whose type
/// changed, gets a whiteout (a directory entry alone would keep a lower
/// symlink to a directory). A hard-link group is written whole when any of
/// its names changed, or its names did.
pub fn plan<'a>(scan: &'a Scan, lower: &Tree) -> Plan<'a> {
    let order = scan.sorted();
    let groups = scan.link_groups();
    let lower_groups = lower.link_groups();
    let group_of = |i: u32| scan.link_group(i).filter(|g| groups.contains_key(g));
    let find = |path: &[u8]| {
        order
            .binary_search_by(|&j| scan.path(j).cmp(path))
            .ok()
            .map(|k| order[k])
    };
    let mut changed = vec![true; scan.len()];
    let mut whiteouts = Vec::new();
    let mut now = order.iter().copied().peekable();
    for (path, inode) in lower.entries() {
        while now.next_if(|&i| scan.path(i) < path).is_some() {}
        let Some(i) = now.next_if(|&i| scan.path(i) == path) else {
            whiteout_unless_covered(scan, lower, path, &find, &mut whiteouts);
            continue;
        };
        if !lower.metas().same_type(inode, scan.metas(), i) {
            whiteout_unless_covered(scan, lower, path, &find, &mut whiteouts);
        }
        let names_before = lower_groups.get(&inode).map(Vec::as_slice);
        let names_now = group_of(i).and_then(|g| groups.get(&g)).map(Vec::as_slice);
        changed[i as usize] = !lower.metas().same(inode, scan.metas(), i) || names_before != names_now;
    }
    let dirty: HashSet<u64> = (0..scan.len() as u32)
        .filter(|&i| changed[i as usize])
        .filter_map(group_of)
        .collect();
    let mut items: Vec<Planned> = whiteouts.into_iter().map(Planned::Whiteout).collect();
    let mut first_names: HashMap<u64, u32> = HashMap::new();
    for i in 0..scan.len() as u32 {
        let group = group_of(i);
        let write = match group {
            Some(g) => dirty.contains(&g),
            None => changed[i as usize],
        };
        if !write {
            continue;
        }
        match group.and_then(|g| first_names.get(&g)) {
            Some(&first) => items.push(Planned::Link(i, first)),
            None => {
                if let Some(g) = group {
                    first_names.insert(g, i);
                }
                items.push(Planned::Entry(i));
            }
        }
    }
    Plan { scan, items }
}

/// Adds a whiteout of the lower entry `path`, unless its parent is itself
/// gone or retyped: the parent's whiteout covers it then.
fn whiteout_unless_covered(
    scan: &Scan,
    lower: &Tree,
    path: &[u8],
    find: &dyn Fn(&[u8]) -> Option<u32>,
    out: &mut Vec<Vec<u8>>,
) {
    if path.is_empty() {
        return;
    }
    let parent = split(path).0;
    let parent_lives = parent.is_empty()
        || (find(parent).is_some_and(|i| scan.metas().is_dir(i))
            && lower.inode(parent).is_some_and(|i| lower.metas().is_dir(i)));
    if parent_lives {
        out.push(path.to_vec());
    }
}

/// Checks that `plan`, applied to `lower`, gives exactly the scanned tree;
/// `lower` is then that tree (to cache as the new image's tree).
pub fn checked(plan: &Plan<'_>, lower: &mut Tree) -> Result<()> {
    plan.apply_to(lower)?;
    if let Some(path) = lower.first_difference_from(plan.scan) {
        bail!(
            "the delta layer would not restore the tree as it was read (first at {}): did the root change meanwhile?",
            show(&path)
        );
    }
    Ok(())
}

/// Writes the planned layer into `out` (an empty file, synced when done);
/// the caller moves it where its digest says.
pub fn write(plan: &Plan<'_>, out: &File, settings: &Settings) -> Result<Layer> {
    let file = out.try_clone().wrap_err("opening the new layer")?;
    let (tx, rx) = sync_channel::<Vec<u8>>(4);
    let settings = *settings;
    let compressor = thread::spawn(move || compress(rx, file, &settings));
    let total: u64 = plan
        .items
        .iter()
        .map(|i| match i {
            Planned::Entry(i) => plan.scan.metas().file_size(*i),
            _ => 0,
        })
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
    written?;
    Ok(Layer {
        digest,
        diff_id,
        size,
        media_type: settings.format.media_type(),
        entries: plan.items.len(),
        whiteouts: plan.whiteouts(),
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

    /// Copies `size` bytes of `file` straight into the chunks, then the
    /// zeros that pad them to a tar block: no copy through a small buffer.
    /// A file that ends early must not leave the archive short.
    fn copy_file(&mut self, file: File, size: u64) -> io::Result<u64> {
        let mut file = file.take(size);
        let mut copied = 0u64;
        loop {
            self.running()?;
            // Never past the chunk's capacity: the buffer is not grown.
            let room = (CHUNK - self.buf.len()) as u64;
            let n = (&mut file).take(room).read_to_end(&mut self.buf)?;
            copied += n as u64;
            if self.buf.len() >= CHUNK {
                self.flush_chunk();
            }
            if n == 0 {
                break;
            }
        }
        let pad = (BLOCK - (copied % BLOCK as u64) as usize) % BLOCK;
        self.write_all(&[0; BLOCK][..pad])?;
        Ok(copied)
    }

    fn running(&self) -> io::Result<()> {
        match self.tx {
            Some(_) => Ok(()),
            None => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the layer compressor stopped",
            )),
        }
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.running()?;
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

fn compress(rx: Receiver<Vec<u8>>, file: File, settings: &Settings) -> Result<(Digest, u64)> {
    let out = HashingWriter::new(BufWriter::with_capacity(CHUNK, Pieces(file)));
    let mut z = compress::Writer::new(out, settings)?;
    for chunk in rx {
        z.write_all(&chunk)?;
    }
    let (file, digest, size) = z.finish()?.finish()?;
    file.get_ref().0.sync_all()?;
    Ok((digest, size))
}

fn header_for(meta: &Meta, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(meta.mode);
    h.set_uid(meta.uid);
    h.set_gid(meta.gid);
    h.set_mtime(meta.mtime.sec.max(0) as u64);
    h.set_size(0);
    h.set_entry_type(kind);
    if let Kind::Char { major, minor } | Kind::Block { major, minor } = meta.kind {
        // GNU headers always have room for device numbers.
        let _ = h.set_device_major(major);
        let _ = h.set_device_minor(minor);
    }
    h
}

fn entry_type(kind: &Kind) -> tar::EntryType {
    match kind {
        Kind::File { .. } => tar::EntryType::Regular,
        Kind::Dir => tar::EntryType::Directory,
        Kind::Symlink { .. } => tar::EntryType::Symlink,
        Kind::Char { .. } => tar::EntryType::Char,
        Kind::Block { .. } => tar::EntryType::Block,
        Kind::Fifo => tar::EntryType::Fifo,
    }
}

/// The PAX records an entry needs beyond its header: a time with
/// nanoseconds (or before 1970), and xattrs.
fn pax_records(meta: &Meta) -> Vec<u8> {
    let mut out = Vec::new();
    let t = meta.mtime;
    if t.nsec != 0 || t.sec < 0 {
        let value = match (t.sec < 0, t.nsec) {
            (false, n) => format!("{}.{n:09}", t.sec),
            (true, 0) => format!("{}", t.sec),
            (true, n) => format!("-{}.{:09}", -(t.sec + 1), 1_000_000_000 - n),
        };
        record(&mut out, b"mtime", value.as_bytes());
    }
    for (k, v) in &meta.xattrs {
        record(&mut out, &[b"SCHILY.xattr.", k.as_slice()].concat(), v);
    }
    out
}

/// One PAX record, `LEN KEY=VALUE\n`, where LEN counts its own digits.
pub(crate) fn record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn write_tar(plan: &Plan<'_>, sink: &mut ChunkSink) -> Result<()> {
    let mut tar = tar::Builder::new(sink);
    for item in &plan.items {
        match item {
            Planned::Whiteout(path) => {
                let (parent, base) = split(path);
                let name = super::join(parent, &[WHITEOUT, base].concat());
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                tar.append_data(&mut h, std::ffi::OsStr::from_bytes(&name), io::empty())?;
            }
            Planned::Entry(i) => append_entry(&mut tar, plan.scan, *i)
                .wrap_err_with(|| format!("storing {}", show(plan.scan.path(*i))))?,
            Planned::Link(i, first) => {
                let mut h = header_for(&plan.scan.meta(*i), tar::EntryType::Link);
                let mut pax = Vec::new();
                set_link_name(&mut h, plan.scan.path(*first), &mut pax);
                append_pax(&mut tar, &pax)?;
                tar.append_data(&mut h, name_of(plan.scan.path(*i)), io::empty())?;
            }
        }
    }
    tar.finish()?;
    Ok(())
}

fn name_of(path: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(if path.is_empty() { b"./" } else { path })
}

/// Puts a link target into the header as its bytes are (the tar crate
/// would normalise `/` to `//`), or into a PAX `linkpath` record when long.
fn set_link_name(h: &mut tar::Header, target: &[u8], pax: &mut Vec<u8>) {
    let field = &mut h.as_old_mut().linkname;
    field.fill(0);
    if target.len() <= field.len() {
        field[..target.len()].copy_from_slice(target);
    } else {
        record(pax, b"linkpath", target);
    }
}

fn append_pax(tar: &mut tar::Builder<&mut ChunkSink>, pax: &[u8]) -> Result<()> {
    if !pax.is_empty() {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(pax.len() as u64);
        h.set_path("PaxHeader")?;
        h.set_cksum();
        tar.append(&h, pax)?;
    }
    Ok(())
}

fn append_entry(tar: &mut tar::Builder<&mut ChunkSink>, scan: &Scan, i: u32) -> Result<()> {
    let meta = scan.meta(i);
    let mut pax = pax_records(&meta);
    let mut h = header_for(&meta, entry_type(&meta.kind));
    if let Kind::Symlink { target } = &meta.kind {
        set_link_name(&mut h, target, &mut pax);
    }
    append_pax(tar, &pax)?;
    let path = name_of(scan.path(i));
    match (&meta.kind, scan.source(i)) {
        (Kind::File { size }, Some(source)) if *size > 0 => {
            let f = File::open(&source)?;
            h.set_size(*size);
            // The header says the size; the content follows it directly.
            tar.append_data(&mut h, path, io::empty())?;
            // A file that shrinks while we read must not corrupt the archive
            // (one that grows is cut at the size the header says).
            if tar.get_mut().copy_file(f, *size)? != *size {
                return Err(eyre!("{} changed size while it was stored", source.display()));
            }
        }
        _ => tar.append_data(&mut h, path, io::empty())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    use crate::layer::scan;

    /// The plan's items as words: `-path` whiteouts, `+path` entries,
    /// `path=first` further names.
    fn words(plan: &Plan<'_>) -> Vec<String> {
        let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
        plan.items
            .iter()
            .map(|item| match item {
                Planned::Whiteout(p) => format!("-{}", show(p)),
                Planned::Entry(i) => format!("+{}", show(plan.scan.path(*i))),
                Planned::Link(i, first) => format!("{}={}", show(plan.scan.path(*i)), show(plan.scan.path(*first))),
            })
            .collect()
    }

    /// Plans `root` over `lower`, checks the plan, and gives its words and
    /// the tree it makes.
    fn step(root: &std::path::Path, mut lower: Tree) -> (Vec<String>, Tree) {
        let scanned = scan::scan(root).unwrap();
        let plan = plan(&scanned, &lower);
        checked(&plan, &mut lower).unwrap();
        assert_eq!(lower.first_difference_from(&scanned), None);
        (words(&plan), lower)
    }

    #[test]
    fn a_plan_carries_what_changed_and_whiteouts_what_went() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("d/sub")).unwrap();
        fs::write(root.join("d/sub/f"), "f").unwrap();
        fs::write(root.join("a"), "a").unwrap();
        fs::hard_link(root.join("a"), root.join("b")).unwrap();
        fs::write(root.join("a-c"), "").unwrap();
        symlink("d", root.join("l")).unwrap();
        let (first, tree) = step(&root, Tree::new());
        // Walk order: a directory's names sorted, parents first.
        assert_eq!(first, ["+", "+a", "+a-c", "b=a", "+d", "+d/sub", "+d/sub/f", "+l"]);
        let (again, tree) = step(&root, tree);
        assert!(again.is_empty(), "an unchanged tree needs nothing: {again:?}");

        // A directory that became a file: one whiteout covers what was in it.
        fs::remove_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d"), "now a file").unwrap();
        let times = fs::File::options().write(true).open(root.join("a")).unwrap();
        times.set_modified(std::time::UNIX_EPOCH).unwrap();
        fs::remove_file(root.join("a-c")).unwrap();
        let (words, _) = step(&root, tree);
        // The root's mtime changed too; a hard-link group goes whole.
        assert_eq!(words, ["-a-c", "-d", "+", "+a", "b=a", "+d"]);
    }

    #[test]
    fn pax_records_count_their_own_length() {
        let mut out = Vec::new();
        record(&mut out, b"mtime", b"1600000000.123456789");
        assert_eq!(out, b"30 mtime=1600000000.123456789\n");
        let mut out = Vec::new();
        record(&mut out, b"a", b"");
        assert_eq!(out, b"5 a=\n");
        let parsed: Vec<_> = tar::PaxExtensions::new(&out)
            .map(|e| e.unwrap().key_bytes().to_vec())
            .collect();
        assert_eq!(parsed, vec![b"a".to_vec()]);
    }

    /// Writes the first layer of `root` as gzip; its tar stream, and the
    /// layer (or the error).
    fn layer_of(scanned: &Scan) -> (Vec<u8>, Result<Layer>) {
        let plan = plan(scanned, &Tree::new());
        let out = tempfile::tempfile().unwrap();
        let layer = write(&plan, &out, &Settings::default());
        let mut tar = Vec::new();
        let file = out.try_clone().unwrap();
        io::Seek::rewind(&mut &file).unwrap();
        let _ = flate2::read::MultiGzDecoder::new(file).read_to_end(&mut tar);
        (tar, layer)
    }

    #[test]
    fn file_contents_follow_their_headers_whole_and_padded_at_any_size() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(&root).unwrap();
        let sizes = [0, 1, 511, 512, 513, CHUNK - 1, CHUNK, CHUNK + 700, 3 * CHUNK + 5];
        let body = |n: usize| (0..n).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>();
        for n in sizes {
            fs::write(root.join(format!("f{n}")), body(n)).unwrap();
        }
        let scanned = scan::scan(&root).unwrap();
        let (tar, layer) = layer_of(&scanned);
        let layer = layer.unwrap();
        assert_eq!(tar.len() % BLOCK, 0);
        assert_eq!(layer.diff_id, Digest::from_hasher(Sha256::new_with_prefix(&tar)));
        let mut found = Vec::new();
        for entry in tar::Archive::new(&tar[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            if let Some(n) = name.strip_prefix('f') {
                let mut got = Vec::new();
                entry.read_to_end(&mut got).unwrap();
                assert!(got == body(n.parse().unwrap()), "{name}: other content");
                found.push(name);
            }
        }
        assert_eq!(found.len(), sizes.len(), "{found:?}");
    }

    #[test]
    fn a_file_that_shrinks_after_the_scan_fails_the_layer_and_one_that_grows_is_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("grows"), vec![b'g'; 1000]).unwrap();
        fs::write(root.join("shrinks"), vec![b's'; CHUNK + 10]).unwrap();
        let scanned = scan::scan(&root).unwrap();
        fs::write(root.join("grows"), vec![b'g'; 5000]).unwrap();
        let (tar, layer) = layer_of(&scanned);
        layer.unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let grows = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().ends_with("grows"));
        assert_eq!(grows.map(|e| e.size()), Some(1000));

        fs::write(root.join("shrinks"), vec![b's'; 100]).unwrap();
        let err = layer_of(&scanned).1.unwrap_err();
        assert!(
            format!("{err:#}").contains("shrinks changed size while it was stored"),
            "{err:#}"
        );
    }
}
