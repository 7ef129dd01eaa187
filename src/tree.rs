//! What a root tree holds, entry by entry: scanned from disk, or replayed from
//! the tar layers of an image (whiteouts applied). Comparing the two tells
//! which entries a delta layer must carry.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use color_eyre::eyre::{Result, WrapErr};

/// The directories whose contents a stash leaves out (the directories stay).
pub const SKIP_CONTENTS: [&[u8]; 3] = [b"dev", b"proc", b"sys"];

/// Prefix of a whiteout entry's base name.
pub const WHITEOUT: &[u8] = b".wh.";
/// Base name of an opaque-directory whiteout.
pub const OPAQUE: &[u8] = b".wh..wh..opq";

/// The kind of an entry, with what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file of this many bytes.
    File { size: u64 },
    /// A second name of an earlier file (relative path of the first name).
    HardLink { target: Vec<u8> },
    /// A directory.
    Dir,
    /// A symbolic link and its target.
    Symlink { target: Vec<u8> },
    /// A character device.
    Char { major: u32, minor: u32 },
    /// A block device.
    Block { major: u32, minor: u32 },
    /// A named pipe.
    Fifo,
}

/// Everything a layer records of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Type and type-specific data.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time in whole seconds.
    pub mtime: i64,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A tree: relative path (bytes, no leading `/` or `./`) to its metadata.
pub type Tree = BTreeMap<Vec<u8>, Meta>;

/// One entry found on disk, in walk order.
#[derive(Debug, Clone)]
pub struct Scanned {
    /// Relative path.
    pub path: Vec<u8>,
    /// Its metadata (hard links already resolved to their first name).
    pub meta: Meta,
    /// Where to read a regular file's content.
    pub source: PathBuf,
    /// Identifies a hard-link group (device, inode) for files with several names.
    pub link_group: Option<(u64, u64)>,
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

/// Walks `root` in a stable order (names sorted bytewise, parents before
/// children), leaving out the contents of dev/, proc/ and sys/ and sockets.
pub fn scan(root: &Path, epoch: Option<i64>) -> Result<Vec<Scanned>> {
    let mut out = Vec::new();
    let mut first_names: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()))
        .into_iter()
        .filter_entry(|e| {
            let parent_skipped = e.depth() == 2
                && e.path()
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|p| SKIP_CONTENTS.contains(&p.as_bytes()));
            !parent_skipped
        });
    for entry in walker {
        let entry = entry.wrap_err_with(|| format!("walking {}", root.display()))?;
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(path).as_os_str().as_bytes().to_vec();
        let md = entry
            .metadata()
            .wrap_err_with(|| format!("reading {}", path.display()))?;
        let ft = md.file_type();
        let mut link_group = None;
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).wrap_err_with(|| format!("reading link {}", path.display()))?;
            Kind::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            }
        } else if ft.is_file() {
            if md.nlink() > 1 {
                let key = (md.dev(), md.ino());
                link_group = Some(key);
                match first_names.get(&key) {
                    Some(first) => Kind::HardLink { target: first.clone() },
                    None => {
                        first_names.insert(key, rel.clone());
                        Kind::File { size: md.len() }
                    }
                }
            } else {
                Kind::File { size: md.len() }
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
            continue;
        };
        let mtime = epoch.map_or(md.mtime(), |e| md.mtime().min(e));
        let meta = Meta {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid().into(),
            gid: md.gid().into(),
            mtime,
            xattrs: read_xattrs(path)?,
        };
        out.push(Scanned {
            path: rel,
            meta,
            source: path.to_path_buf(),
            link_group,
        });
    }
    Ok(out)
}

/// Normalises a path from a tar header: no leading `./` or `/`, no trailing `/`.
pub fn clean_path(raw: &[u8]) -> Vec<u8> {
    let mut p = raw;
    loop {
        if let Some(rest) = p.strip_prefix(b"./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix(b"/") {
            p = rest;
        } else {
            break;
        }
    }
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    if p == b"." {
        p = b"";
    }
    p.to_vec()
}

/// Removes `path` and everything below it from `tree`.
pub fn remove_subtree(tree: &mut Tree, path: &[u8]) {
    tree.remove(path);
    remove_children(tree, path);
}

fn remove_children(tree: &mut Tree, dir: &[u8]) {
    let mut prefix = dir.to_vec();
    if !prefix.is_empty() {
        prefix.push(b'/');
    }
    let doomed: Vec<Vec<u8>> = tree
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        tree.remove(&k);
    }
}

fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

/// A tar stream completed where its writer stopped short: some writers (umoci
/// insert among them) end a layer without padding its last entry to a
/// 512-byte block and without the two zero blocks that end an archive.
/// After the stream ends this reader supplies both, so tar readers see a
/// well-formed archive. Content is still checked by the layer's digest.
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
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
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

/// Applies one uncompressed tar layer to `tree`, honouring whiteouts.
pub fn apply_layer(tree: &mut Tree, layer: impl Read) -> Result<()> {
    let mut archive = tar::Archive::new(CompleteTar::new(layer));
    for entry in archive.entries().wrap_err("reading layer")? {
        let mut entry = entry.wrap_err("reading layer entry")?;
        let path = clean_path(&entry.path_bytes());
        if path.is_empty() {
            continue;
        }
        let (parent, base) = split_parent(&path);
        if base == OPAQUE {
            remove_children(tree, parent);
            continue;
        }
        if let Some(hidden) = base.strip_prefix(WHITEOUT) {
            let mut victim = parent.to_vec();
            if !victim.is_empty() {
                victim.push(b'/');
            }
            victim.extend_from_slice(hidden);
            remove_subtree(tree, &victim);
            continue;
        }
        let meta = meta_of_entry(&mut entry)?;
        if meta.kind != Kind::Dir {
            remove_children(tree, &path);
        }
        tree.insert(path, meta);
    }
    Ok(())
}

fn meta_of_entry<R: Read>(entry: &mut tar::Entry<R>) -> Result<Meta> {
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().wrap_err("reading pax headers")? {
        for ext in pax {
            let ext = ext.wrap_err("reading pax header")?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    xattrs.sort();
    let h = entry.header();
    let link = || entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
    let dev = || {
        (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        )
    };
    let kind = match h.entry_type() {
        tar::EntryType::Directory => Kind::Dir,
        tar::EntryType::Symlink => Kind::Symlink { target: link() },
        tar::EntryType::Link => Kind::HardLink {
            target: clean_path(&link()),
        },
        tar::EntryType::Char => Kind::Char {
            major: dev().0,
            minor: dev().1,
        },
        tar::EntryType::Block => Kind::Block {
            major: dev().0,
            minor: dev().1,
        },
        tar::EntryType::Fifo => Kind::Fifo,
        _ => Kind::File { size: entry.size() },
    };
    Ok(Meta {
        kind,
        mode: h.mode().unwrap_or(0) & 0o7777,
        uid: h.uid().unwrap_or(0),
        gid: h.gid().unwrap_or(0),
        mtime: h.mtime().unwrap_or(0) as i64,
        xattrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> Meta {
        Meta {
            kind: Kind::File { size },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            xattrs: vec![],
        }
    }

    #[test]
    fn clean_path_strips_prefixes_and_slashes() {
        for (raw, want) in [("./a/b/", "a/b"), ("/a", "a"), ("a", "a"), ("./", ""), (".", "")] {
            assert_eq!(clean_path(raw.as_bytes()), want.as_bytes());
        }
    }

    #[test]
    fn remove_subtree_spares_siblings_with_common_prefix() {
        let mut t = Tree::new();
        for p in ["a", "a/x", "a/y/z", "a.txt", "ab"] {
            t.insert(p.as_bytes().to_vec(), file(0));
        }
        remove_subtree(&mut t, b"a");
        let left: Vec<&[u8]> = t.keys().map(Vec::as_slice).collect();
        assert_eq!(left, vec![b"a.txt".as_slice(), b"ab".as_slice()]);
    }

    #[test]
    fn archives_without_padding_or_trailer_still_read() {
        let mut full = Vec::new();
        {
            let mut b = tar::Builder::new(&mut full);
            let mut h = tar::Header::new_gnu();
            h.set_size(6);
            h.set_mode(0o644);
            b.append_data(&mut h, "etc/hostname", &b"plain\n"[..]).unwrap();
            b.finish().unwrap();
        }
        // What umoci insert writes: the header and the content, nothing after.
        let cut = &full[..512 + 6];
        let mut tree = Tree::new();
        apply_layer(&mut tree, cut).unwrap();
        assert_eq!(tree.keys().collect::<Vec<_>>(), vec![&b"etc/hostname".to_vec()]);
        let mut tree = Tree::new();
        apply_layer(&mut tree, &full[..]).unwrap();
        assert_eq!(tree.len(), 1);
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
