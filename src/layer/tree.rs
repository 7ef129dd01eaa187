//! Root trees in memory: what the layers of an image make, replayed with the
//! same rules as the unpacker. Comparing one with a [`Scan`] of a root on
//! disk tells which entries a delta layer must carry, and whether the layer
//! gives back the tree that was read.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::ops::Bound;

use color_eyre::eyre::{eyre, Result};

use super::apply::{self, Applier, Node, Target};
use super::compact::Metas;
use super::scan::Scan;
use super::{is_within, Kind, Meta, StackedLayer, Time};

/// A tree: clean paths (bytes; the root is empty) to entries. Names of one
/// hard-linked file share an inode number.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    paths: BTreeMap<Box<[u8]>, u32>,
    metas: Metas,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// The tree `layers` make, lowest first, every blob verified.
    pub fn replay(layers: &[StackedLayer]) -> Result<Tree> {
        // Layers with their whiteouts first (ours among them) need no record
        // of what each layer wrote, which costs as much as the tree; others
        // are read again with it.
        let mut tree = Tree::new();
        let mut applier = Applier::new(&mut tree).whiteouts_first();
        match applier.apply_layers(layers, &mut |_| Ok(true)) {
            Ok(()) => return Ok(tree),
            Err(_) if applier.saw_late_whiteout() => {}
            Err(e) => return Err(e),
        }
        let mut tree = Tree::new();
        apply::apply_layers(layers, &mut tree, &mut |_| Ok(true))?;
        Ok(tree)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// The entry at `path`.
    pub fn get(&self, path: &[u8]) -> Option<Meta> {
        self.inode(path).map(|i| self.metas.get(i))
    }

    /// The inode number of the entry at `path`.
    pub fn inode(&self, path: &[u8]) -> Option<u32> {
        self.paths.get(path).copied()
    }

    /// The metadata of every inode, by inode number.
    pub fn metas(&self) -> &Metas {
        &self.metas
    }

    /// Every entry, in path order, with its inode number.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], u32)> {
        self.paths.iter().map(|(p, &i)| (&**p, i))
    }

    /// Adds (or replaces) the entry `path` as a new inode, and returns it.
    pub fn insert(&mut self, path: &[u8], meta: &Meta) -> u32 {
        let inode = self.metas.push(meta);
        self.paths.insert(path.into(), inode);
        inode
    }

    /// Adds `path` as another name of inode `inode`.
    pub fn insert_link(&mut self, path: &[u8], inode: u32) {
        self.paths.insert(path.into(), inode);
    }

    /// The names of every inode that has several, each list sorted.
    pub fn link_groups(&self) -> HashMap<u32, Vec<&[u8]>> {
        let mut count = vec![0u8; self.metas.len()];
        for &i in self.paths.values() {
            count[i as usize] = count[i as usize].saturating_add(1);
        }
        let mut out: HashMap<u32, Vec<&[u8]>> = HashMap::new();
        for (p, &i) in &self.paths {
            if count[i as usize] > 1 {
                out.entry(i).or_default().push(p);
            }
        }
        out
    }

    /// The first path at which `self` and `other` differ, in an entry or in
    /// the names its inode has; `None` when they hold the same tree.
    pub fn first_difference(&self, other: &Tree) -> Option<Vec<u8>> {
        let (ga, gb) = (self.link_groups(), other.link_groups());
        first_difference(self.views(&ga), other.views(&gb))
    }

    /// The first path at which `self` and the scanned tree differ, in an
    /// entry or in the names its inode has; `None` when they are the same.
    pub fn first_difference_from(&self, scan: &Scan) -> Option<Vec<u8>> {
        let ga = self.link_groups();
        let gb = scan.link_groups();
        let order = scan.sorted();
        let b = order.iter().map(|&i| View {
            path: scan.path(i),
            metas: scan.metas(),
            at: i,
            names: scan.link_group(i).and_then(|g| gb.get(&g)).map(|n| n.as_slice()),
        });
        first_difference(self.views(&ga), b)
    }

    fn views<'a>(&'a self, groups: &'a HashMap<u32, Vec<&'a [u8]>>) -> impl Iterator<Item = View<'a>> {
        self.entries().map(move |(path, i)| View {
            path,
            metas: &self.metas,
            at: i,
            names: groups.get(&i).map(|n| n.as_slice()),
        })
    }

    fn below(&self, dir: &[u8]) -> Vec<Box<[u8]>> {
        self.paths
            .range::<[u8], _>((Bound::Included(dir), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(dir))
            .filter(|(k, _)| is_within(k, dir) && &***k != dir)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl PartialEq for Tree {
    fn eq(&self, other: &Tree) -> bool {
        self.first_difference(other).is_none()
    }
}

/// One entry of a tree as a comparison sees it.
struct View<'a> {
    path: &'a [u8],
    metas: &'a Metas,
    at: u32,
    /// All names of its inode, sorted, when it has several.
    names: Option<&'a [&'a [u8]]>,
}

/// The first path at which two trees, each in path order, differ.
fn first_difference<'a>(
    mut a: impl Iterator<Item = View<'a>>,
    mut b: impl Iterator<Item = View<'a>>,
) -> Option<Vec<u8>> {
    loop {
        match (a.next(), b.next()) {
            (None, None) => return None,
            (Some(x), None) | (None, Some(x)) => return Some(x.path.to_vec()),
            (Some(x), Some(y)) => {
                if x.path != y.path {
                    return Some(x.path.min(y.path).to_vec());
                }
                if !x.metas.same(x.at, y.metas, y.at) || x.names != y.names {
                    return Some(x.path.to_vec());
                }
            }
        }
    }
}

impl Target for Tree {
    fn node(&mut self, path: &[u8]) -> Result<Option<Node>> {
        if path.is_empty() {
            return Ok(Some(Node::Dir));
        }
        Ok(self.inode(path).map(|i| {
            if self.metas.is_dir(i) {
                Node::Dir
            } else if let Some(target) = self.metas.symlink(i) {
                Node::Symlink(target.to_vec())
            } else {
                Node::Other
            }
        }))
    }

    fn children(&mut self, dir: &[u8]) -> Result<Vec<Vec<u8>>> {
        let skip = if dir.is_empty() { 0 } else { dir.len() + 1 };
        Ok(self
            .below(dir)
            .into_iter()
            .map(|p| p[skip..].to_vec())
            .filter(|rest| !rest.contains(&b'/'))
            .collect())
    }

    fn remove(&mut self, path: &[u8]) -> Result<()> {
        for p in self.below(path) {
            self.paths.remove(&p);
        }
        self.paths.remove(path);
        Ok(())
    }

    fn mkdir(&mut self, path: &[u8]) -> Result<()> {
        let meta = Meta {
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Time::default(),
            xattrs: Vec::new(),
        };
        self.insert(path, &meta);
        Ok(())
    }

    fn put(&mut self, path: &[u8], meta: &Meta, _content: &mut dyn Read) -> Result<()> {
        self.insert(path, meta);
        Ok(())
    }

    fn set_dir(&mut self, path: &[u8], meta: &Meta, _exists: bool) -> Result<()> {
        self.insert(path, meta);
        Ok(())
    }

    fn link(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
        let inode = self.inode(target).ok_or_else(|| eyre!("no entry to link to"))?;
        self.insert_link(path, inode);
        Ok(())
    }

    fn keep_dirlink(&mut self, path: &[u8], meta: &Meta) -> Result<()> {
        let inode = self.inode(path).ok_or_else(|| eyre!("no link to keep"))?;
        self.metas.set_owner_and_time(inode, meta);
        Ok(())
    }
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
            mtime: Time::secs(1),
            xattrs: vec![],
        }
    }

    #[test]
    fn removing_spares_siblings_with_a_common_prefix() {
        let mut t = Tree::new();
        for p in ["a", "a/x", "a/y/z", "a.txt", "ab"] {
            t.insert(p.as_bytes(), &file(0));
        }
        t.remove(b"a").unwrap();
        let left: Vec<&[u8]> = t.entries().map(|(p, _)| p).collect();
        assert_eq!(left, vec![b"a.txt".as_slice(), b"ab".as_slice()]);
    }

    #[test]
    fn children_are_direct_names_only() {
        let mut t = Tree::new();
        for p in ["a", "a/x", "a/y", "a/y/z", "b"] {
            t.insert(p.as_bytes(), &file(0));
        }
        assert_eq!(t.children(b"a").unwrap(), vec![b"x".to_vec(), b"y".to_vec()]);
        assert_eq!(t.children(b"").unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    /// A gzip layer in the layout `dir` of the files `names` (a name ending
    /// in `/` is a directory), in that order.
    fn layer(dir: &std::path::Path, names: &[&str]) -> StackedLayer {
        use crate::oci::{self, Descriptor, Digest, MediaType};
        use std::io::Write as _;
        let mut tar = tar::Builder::new(Vec::new());
        for name in names {
            let mut h = tar::Header::new_gnu();
            let kind = if name.ends_with('/') {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            };
            h.set_entry_type(kind);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, name, std::io::empty()).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let digest = Digest::of(&blob);
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(oci::blob_path(dir, &digest), &blob).unwrap();
        StackedLayer {
            layout: dir.to_path_buf(),
            layer: Descriptor::new(MediaType::ImageLayerGzip, blob.len() as u64, &digest),
            diff_id: Digest::of(&tar),
        }
    }

    #[test]
    fn a_replay_keeps_what_a_layer_wrote_before_its_own_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let lower = layer(dir.path(), &["d/", "d/old", "e/", "e/x", "gone"]);
        // Whiteouts after entries, as other tools write them: what the
        // same layer wrote stays.
        let upper = layer(dir.path(), &["d/new", "d/.wh..wh..opq", "e/x", ".wh.e", ".wh.gone"]);
        let tree = Tree::replay(&[lower.clone(), upper]).unwrap();
        let paths: Vec<&[u8]> = tree.entries().map(|(p, _)| p).collect();
        assert_eq!(paths, [&b"d"[..], b"d/new", b"e", b"e/x"]);
        // Whiteouts first: the replay needs no second pass.
        let first = layer(dir.path(), &[".wh.gone", "d/new"]);
        let tree = Tree::replay(&[lower, first]).unwrap();
        let paths: Vec<&[u8]> = tree.entries().map(|(p, _)| p).collect();
        assert_eq!(paths, [&b"d"[..], b"d/new", b"d/old", b"e", b"e/x"]);
    }

    #[test]
    fn differences_name_the_first_path_that_differs() {
        let mut a = Tree::new();
        for p in ["a", "b", "c"] {
            a.insert(p.as_bytes(), &file(0));
        }
        let mut b = a.clone();
        assert_eq!(a.first_difference(&b), None);
        b.insert(b"b", &file(1));
        assert_eq!(a.first_difference(&b), Some(b"b".to_vec()));
        let mut c = a.clone();
        c.remove(b"b").unwrap();
        assert_eq!(a.first_difference(&c), Some(b"b".to_vec()));
        assert_eq!(c.first_difference(&a), Some(b"b".to_vec()));
        let mut d = a.clone();
        let inode = d.inode(b"a").unwrap();
        d.insert_link(b"c", inode);
        assert_eq!(
            a.first_difference(&d),
            Some(b"a".to_vec()),
            "a hard link is a difference"
        );
    }
}
