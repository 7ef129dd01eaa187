//! What the tree of a stored image holds, kept beside the store so that a
//! re-stash need not decompress every layer of its base to learn it.
//!
//! Entries are keyed by the image's chain ID (from its layers' diff_ids, as
//! the OCI spec defines it), so they describe content, not names. The cache
//! is only a shortcut: a missing or unreadable entry means reading the
//! layers, as before.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use color_eyre::eyre::Result;
use sha2::{Digest as _, Sha256};

use super::tree::Tree;
use super::{Kind, Meta, Time};
use crate::oci::layout::write_atomic;
use crate::oci::Digest;

const DIR: &str = ".kiwi-stackbuild-trees";
/// Version 2 keeps nanoseconds and hard links as shared inodes; files of
/// version 1 are simply not read (the layers are, instead).
const MAGIC: &[u8] = b"kiwi-stackbuild tree 2\n";

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

/// The cached tree of the image whose chain ID is `chain`, if there is one.
pub fn load(store_root: &Path, chain: &Digest) -> Option<Tree> {
    let bytes = fs::read(file(store_root, chain)).ok()?;
    decode(&bytes)
}

/// Caches `tree` as the tree of the image whose chain ID is `chain`.
pub fn save(store_root: &Path, chain: &Digest, tree: &Tree) -> Result<()> {
    fs::create_dir_all(dir(store_root))?;
    write_atomic(&file(store_root, chain), &encode(tree))
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

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn encode(tree: &Tree) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    let mut numbers: HashMap<usize, u32> = HashMap::new();
    for (path, inode, m) in tree.entries() {
        put_bytes(&mut out, path);
        let next = numbers.len() as u32;
        let n = *numbers.entry(inode).or_insert(next);
        out.extend_from_slice(&n.to_le_bytes());
        if n != next {
            continue;
        }
        match &m.kind {
            Kind::File { size } => {
                out.push(0);
                out.extend_from_slice(&size.to_le_bytes());
            }
            Kind::Dir => out.push(2),
            Kind::Symlink { target } => {
                out.push(3);
                put_bytes(&mut out, target);
            }
            Kind::Char { major, minor } | Kind::Block { major, minor } => {
                out.push(if matches!(m.kind, Kind::Char { .. }) { 4 } else { 5 });
                out.extend_from_slice(&major.to_le_bytes());
                out.extend_from_slice(&minor.to_le_bytes());
            }
            Kind::Fifo => out.push(6),
        }
        out.extend_from_slice(&m.mode.to_le_bytes());
        out.extend_from_slice(&m.uid.to_le_bytes());
        out.extend_from_slice(&m.gid.to_le_bytes());
        out.extend_from_slice(&m.mtime.sec.to_le_bytes());
        out.extend_from_slice(&m.mtime.nsec.to_le_bytes());
        out.extend_from_slice(&(m.xattrs.len() as u32).to_le_bytes());
        for (k, v) in &m.xattrs {
            put_bytes(&mut out, k);
            put_bytes(&mut out, v);
        }
    }
    out
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
}

fn decode(bytes: &[u8]) -> Option<Tree> {
    let mut c = Cursor(bytes.strip_prefix(MAGIC)?);
    let mut tree = Tree::new();
    let mut inodes: Vec<usize> = Vec::new();
    while !c.0.is_empty() {
        let path = c.bytes()?;
        let n = c.u32()? as usize;
        if n < inodes.len() {
            tree.insert_link(path, inodes[n]);
            continue;
        }
        if n != inodes.len() {
            return None;
        }
        let kind = match c.take(1)?[0] {
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
        let mtime = Time {
            sec: c.u64()? as i64,
            nsec: c.u32()?,
        };
        let count = c.u32()?;
        let mut xattrs = Vec::new();
        for _ in 0..count {
            xattrs.push((c.bytes()?, c.bytes()?));
        }
        inodes.push(tree.insert(
            path,
            Meta {
                kind,
                mode,
                uid,
                gid,
                mtime,
                xattrs,
            },
        ));
    }
    Some(tree)
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
        let file = tree.insert(b"caf\\xe9".to_vec(), meta(Kind::File { size: 42 }));
        tree.insert(b"d".to_vec(), meta(Kind::Dir));
        tree.insert(
            b"l".to_vec(),
            meta(Kind::Symlink {
                target: b"/x\ny".to_vec(),
            }),
        );
        tree.insert_link(b"h".to_vec(), file);
        tree.insert(b"c".to_vec(), meta(Kind::Char { major: 1, minor: 3 }));
        tree.insert(
            b"b".to_vec(),
            meta(Kind::Block {
                major: 259,
                minor: 65536,
            }),
        );
        tree.insert(b"f".to_vec(), meta(Kind::Fifo));
        let back = decode(&encode(&tree)).expect("decodes");
        assert_eq!(back.first_difference(&tree), None);
        assert_eq!(back.link_groups().len(), 2, "the hard link survives");
        let bytes = encode(&tree);
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None, "a cut file must not decode");
        assert_eq!(decode(b"something else"), None);
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
