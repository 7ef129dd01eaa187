//! What the tree of a stored image holds, kept beside the store so that a
//! re-stash need not decompress every layer of its base to learn it.
//!
//! Entries are keyed by the image's chain ID (from its layers' diff_ids, as
//! the OCI spec defines it), so they describe content, not names. The cache
//! is only a shortcut: a missing or unreadable entry means reading the
//! layers, as before.

use std::fs;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use color_eyre::eyre::Result;
use sha2::{Digest as _, Sha256};

use super::scan::{Record, Stamp};
use super::tree::Tree;
use super::{Kind, Meta, Time};
use crate::fsutil::Pieces;
use crate::oci::layout::readable;
use crate::oci::Digest;

const DIR: &str = ".kiwi-stackbuild-trees";
/// Version 2 keeps nanoseconds and hard links as shared inodes, version 3
/// the record of the scan the tree was read by, if it was; files of older
/// versions are simply not read (the layers are, instead).
const MAGIC: &[u8] = b"kiwi-stackbuild tree 3\n";

/// The chain ID of a stack of layers: the first diff_id, then
/// sha256("<chain> <diff_id>") for each further layer.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    let mut ids = diff_ids.iter();
    let mut chain = ids.next()?.clone();
    for id in ids {
        chain = Digest::from_hasher(Sha256::new_with_prefix(format!("{chain} {id}").as_bytes()));
    }
    Some(chain)
}

/// The cache directory of a store.
pub fn dir(store_root: &Path) -> PathBuf {
    store_root.join(DIR)
}

fn file(store_root: &Path, chain: &Digest) -> PathBuf {
    dir(store_root).join(chain.hex())
}

/// The cached tree of the image whose chain ID is `chain`, if there is one,
/// with the record of the scan of a root that read it, if one did.
pub fn load(store_root: &Path, chain: &Digest) -> Option<(Tree, Option<Record>)> {
    let file = fs::File::open(file(store_root, chain)).ok()?;
    decode(&mut BufReader::with_capacity(1 << 16, file))
}

/// A tree written to a temp file of the cache, not named yet, which an
/// interrupt removes.
pub struct Pending {
    // Removed before it is unregistered: fields drop in order.
    file: tempfile::NamedTempFile,
    _registered: crate::interrupt::Registered,
}

/// Writes `tree`, with the record of the scan that read it if there is one,
/// to a temp file of the cache of `store_root`.
pub fn prepare(store_root: &Path, tree: &Tree, record: Option<&Record>) -> Result<Pending> {
    let dir = dir(store_root);
    fs::create_dir_all(&dir)?;
    let (tmp, _registered) = crate::interrupt::create(
        || {
            tempfile::Builder::new()
                .prefix(".tmp-")
                .permissions(readable())
                .tempfile_in(&dir)
        },
        |t| t.path().to_path_buf(),
    )?;
    let mut out = BufWriter::with_capacity(1 << 16, Pieces(tmp));
    encode(tree, record, &mut out)?;
    let Pieces(tmp) = out.into_inner().map_err(|e| e.into_error())?;
    tmp.as_file().sync_all()?;
    Ok(Pending { file: tmp, _registered })
}

impl Pending {
    /// Caches the tree as that of the image whose chain ID is `chain`.
    pub fn commit(self, store_root: &Path, chain: &Digest) -> Result<()> {
        self.file.persist(file(store_root, chain)).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Caches `tree` as the tree of the image whose chain ID is `chain`.
#[cfg(test)]
pub fn save(store_root: &Path, chain: &Digest, tree: &Tree) -> Result<()> {
    prepare(store_root, tree, None)?.commit(store_root, chain)
}

/// Removes cached trees of images not in `keep` (chain IDs).
pub fn prune(store_root: &Path, keep: &[Digest]) -> usize {
    let Ok(entries) = fs::read_dir(dir(store_root)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.iter().any(|k| k.hex() == name) && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn put_bytes(out: &mut impl Write, b: &[u8]) -> io::Result<()> {
    out.write_all(&(b.len() as u32).to_le_bytes())?;
    out.write_all(b)
}

fn put_time(out: &mut impl Write, t: Time) -> io::Result<()> {
    out.write_all(&t.sec.to_le_bytes())?;
    out.write_all(&t.nsec.to_le_bytes())
}

fn encode(tree: &Tree, record: Option<&Record>, out: &mut impl Write) -> io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&[u8::from(record.is_some())])?;
    if let Some(r) = record {
        put_bytes(out, &r.root)?;
        out.write_all(&r.dev.to_le_bytes())?;
        out.write_all(&r.root_ino.to_le_bytes())?;
        put_time(out, r.trusted_before)?;
    }
    // Inode numbers in the file count up in the order inodes first appear.
    let mut numbers = vec![u32::MAX; tree.metas().len()];
    let mut next = 0u32;
    for (path, inode) in tree.entries() {
        put_bytes(out, path)?;
        let seen = numbers[inode as usize];
        if seen != u32::MAX {
            out.write_all(&seen.to_le_bytes())?;
            continue;
        }
        numbers[inode as usize] = next;
        out.write_all(&next.to_le_bytes())?;
        next += 1;
        let m = tree.metas().get(inode);
        match &m.kind {
            Kind::File { size } => {
                out.write_all(&[0])?;
                out.write_all(&size.to_le_bytes())?;
            }
            Kind::Dir => out.write_all(&[2])?,
            Kind::Symlink { target } => {
                out.write_all(&[3])?;
                put_bytes(out, target)?;
            }
            Kind::Char { major, minor } | Kind::Block { major, minor } => {
                out.write_all(&[if matches!(m.kind, Kind::Char { .. }) { 4 } else { 5 }])?;
                out.write_all(&major.to_le_bytes())?;
                out.write_all(&minor.to_le_bytes())?;
            }
            Kind::Fifo => out.write_all(&[6])?,
        }
        out.write_all(&m.mode.to_le_bytes())?;
        out.write_all(&m.uid.to_le_bytes())?;
        out.write_all(&m.gid.to_le_bytes())?;
        put_time(out, m.mtime)?;
        out.write_all(&(m.xattrs.len() as u32).to_le_bytes())?;
        for (k, v) in &m.xattrs {
            put_bytes(out, k)?;
            put_bytes(out, v)?;
        }
        if let Some(r) = record {
            match r.stamps.get(inode as usize).copied().flatten() {
                Some(stamp) => {
                    let (ino, ctime) = stamp.parts();
                    out.write_all(&[1])?;
                    out.write_all(&ino.to_le_bytes())?;
                    out.write_all(&ctime.to_le_bytes())?;
                }
                None => out.write_all(&[0])?,
            }
        }
    }
    Ok(())
}

/// Reads a cache file; `None` at any mismatch (a cut or foreign file).
struct Cursor<R>(R);

impl<R: BufRead> Cursor<R> {
    fn at_end(&mut self) -> Option<bool> {
        self.0.fill_buf().ok().map(<[u8]>::is_empty)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut out = [0; N];
        self.0.read_exact(&mut out).ok()?;
        Some(out)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn time(&mut self) -> Option<Time> {
        Some(Time {
            sec: self.u64()? as i64,
            nsec: self.u32()?,
        })
    }

    fn flag(&mut self) -> Option<bool> {
        match self.array::<1>()?[0] {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn bytes_into(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let n = self.u32()? as usize;
        out.clear();
        // Read in steps, so that a crafted length cannot allocate much.
        (&mut self.0).take(n as u64).read_to_end(out).ok()?;
        (out.len() == n).then_some(())
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.bytes_into(&mut out)?;
        Some(out)
    }
}

fn decode(input: &mut impl BufRead) -> Option<(Tree, Option<Record>)> {
    let mut magic = vec![0; MAGIC.len()];
    input.read_exact(&mut magic).ok()?;
    if magic != MAGIC {
        return None;
    }
    let mut c = Cursor(input);
    let mut record = match c.flag()? {
        true => Some(Record {
            root: c.bytes()?,
            dev: c.u64()?,
            root_ino: c.u64()?,
            trusted_before: c.time()?,
            stamps: Vec::new(),
        }),
        false => None,
    };
    let mut tree = Tree::new();
    let mut inodes: Vec<u32> = Vec::new();
    let mut path = Vec::new();
    while !c.at_end()? {
        c.bytes_into(&mut path)?;
        let n = c.u32()? as usize;
        if n < inodes.len() {
            tree.insert_link(&path, inodes[n]);
            continue;
        }
        if n != inodes.len() {
            return None;
        }
        let kind = match c.array::<1>()?[0] {
            0 => Kind::File { size: c.u64()? },
            2 => Kind::Dir,
            3 => Kind::Symlink { target: c.bytes()? },
            4 => Kind::Char {
                major: c.u32()?,
                minor: c.u32()?,
            },
            5 => Kind::Block {
                major: c.u32()?,
                minor: c.u32()?,
            },
            6 => Kind::Fifo,
            _ => return None,
        };
        let (mode, uid, gid) = (c.u32()?, c.u64()?, c.u64()?);
        let mtime = c.time()?;
        let count = c.u32()?;
        let mut xattrs = Vec::new();
        for _ in 0..count {
            xattrs.push((c.bytes()?, c.bytes()?));
        }
        let meta = Meta {
            kind,
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        };
        let inode = tree.insert(&path, &meta);
        if let Some(r) = &mut record {
            let stamp = match c.flag()? {
                true => Some(Stamp::from_parts(c.u64()?, c.u64()? as i64)?),
                false => None,
            };
            // Inodes are numbered as they are inserted, from 0.
            debug_assert_eq!(r.stamps.len(), inode as usize);
            r.stamps.push(stamp);
        }
        inodes.push(inode);
    }
    Some((tree, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_round_trip() {
        let meta = |kind| Meta {
            kind,
            mode: 0o4755,
            uid: 1234,
            gid: 5678,
            mtime: Time { sec: -5, nsec: 7 },
            xattrs: vec![(b"user.a".to_vec(), vec![0, 1, 2])],
        };
        let mut tree = Tree::new();
        let file = tree.insert(b"caf\\xe9", &meta(Kind::File { size: 42 }));
        tree.insert(b"d", &meta(Kind::Dir));
        tree.insert(
            b"l",
            &meta(Kind::Symlink {
                target: b"/x\ny".to_vec(),
            }),
        );
        tree.insert_link(b"h", file);
        tree.insert(b"c", &meta(Kind::Char { major: 1, minor: 3 }));
        tree.insert(
            b"b",
            &meta(Kind::Block {
                major: 259,
                minor: 65536,
            }),
        );
        tree.insert(b"f", &meta(Kind::Fifo));
        let mut bytes = Vec::new();
        encode(&tree, None, &mut bytes).unwrap();
        let (back, record) = decode(&mut bytes.as_slice()).expect("decodes");
        assert_eq!(record, None);
        assert_eq!(back.first_difference(&tree), None);
        assert_eq!(back.link_groups().len(), 1, "the hard link survives");
        assert_eq!(back.get(b"h"), Some(meta(Kind::File { size: 42 })));
        assert!(
            decode(&mut &bytes[..bytes.len() - 1]).is_none(),
            "a cut file must not decode"
        );
        assert!(decode(&mut &b"something else"[..]).is_none());
    }

    #[test]
    fn a_record_round_trips_by_path() {
        let meta = |kind| Meta {
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Time::secs(1),
            xattrs: vec![],
        };
        let mut tree = Tree::new();
        // Inserted out of path order, so the file numbers its inodes anew.
        tree.insert(b"z", &meta(Kind::File { size: 1 }));
        let d = tree.insert(b"d", &meta(Kind::Dir));
        tree.insert(b"a", &meta(Kind::Fifo));
        tree.insert_link(b"y", d);
        let stamp = |ino| {
            Stamp::new(
                ino,
                Time {
                    sec: -3,
                    nsec: ino as u32,
                },
            )
        };
        let record = Record {
            root: b"/r\xff".to_vec(),
            dev: 1 << 40,
            root_ino: 2,
            trusted_before: Time { sec: 99, nsec: 5 },
            stamps: vec![stamp(10), stamp(11), None],
        };
        let mut bytes = Vec::new();
        encode(&tree, Some(&record), &mut bytes).unwrap();
        let (back, got) = decode(&mut bytes.as_slice()).expect("decodes");
        let got = got.expect("a record");
        assert_eq!(back.first_difference(&tree), None);
        assert_eq!(
            (&got.root, got.dev, got.root_ino, got.trusted_before),
            (&record.root, record.dev, record.root_ino, record.trusted_before)
        );
        for path in [&b"a"[..], b"d", b"y", b"z"] {
            let want = record.stamps[tree.inode(path).unwrap() as usize];
            assert_eq!(got.stamps[back.inode(path).unwrap() as usize], want, "{path:?}");
        }
        assert!(decode(&mut &bytes[..bytes.len() - 1]).is_none());
    }

    #[test]
    fn a_cache_file_of_another_format_is_ignored() {
        let store = tempfile::tempdir().unwrap();
        let chain = Digest::of(b"chain");
        let mut tree = Tree::new();
        tree.insert(
            b"a",
            &Meta {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: Time::secs(1),
                xattrs: vec![],
            },
        );
        save(store.path(), &chain, &tree).unwrap();
        assert_eq!(load(store.path(), &chain).map(|(t, _)| t.len()), Some(1));
        // Version 1 had the same records without nanoseconds.
        let old = fs::read(file(store.path(), &chain)).unwrap();
        let old = [b"kiwi-stackbuild tree 1\n".as_slice(), &old[MAGIC.len()..]].concat();
        fs::write(file(store.path(), &chain), old).unwrap();
        assert!(load(store.path(), &chain).is_none(), "an old cache file was read");
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        let want = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(chain_id(&[a, b]), Some(want));
        assert_eq!(chain_id(&[]), None);
    }
}
