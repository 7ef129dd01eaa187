//! Entry metadata packed for trees of a hundred thousand entries and more:
//! one fixed record per entry, with what few entries have (a symlink's
//! target, xattrs) in a side table. A [`Meta`] is made only when asked for.

use super::{Kind, Meta, Time};

/// No side-table entry.
const NONE: u32 = u32::MAX;

/// One entry's metadata, without its target and xattrs, in 40 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    sec: i64,
    /// A file's size; a device's major (high half) and minor (low half).
    data: u64,
    /// Owner and group; [`BIG_ID`] when they are in the side table.
    uid: u32,
    gid: u32,
    nsec: u32,
    mode: u32,
    /// Index into the side table, or [`NONE`].
    extra: u32,
    kind: u8,
}

/// What only some entries have: a symlink's target, xattrs, an owner or
/// group beyond 32 bits (which a layer may carry, and no Linux file has).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Extra {
    target: Box<[u8]>,
    xattrs: Box<[(Vec<u8>, Vec<u8>)]>,
    ids: Option<Box<(u64, u64)>>,
}

/// A `uid` or `gid` field whose value is in the side table.
const BIG_ID: u32 = u32::MAX;

const FILE: u8 = 0;
const DIR: u8 = 1;
const SYMLINK: u8 = 2;
const CHAR: u8 = 3;
const BLOCK: u8 = 4;
const FIFO: u8 = 5;

/// A growing list of entries' metadata, each named by its index.
#[derive(Debug, Clone, Default)]
pub struct Metas {
    recs: Vec<Rec>,
    extras: Vec<Extra>,
}

impl Metas {
    /// How many records there are.
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// Adds `meta` and returns its index.
    pub fn push(&mut self, meta: &Meta) -> u32 {
        let (kind, data, target): (u8, u64, &[u8]) = match &meta.kind {
            Kind::File { size } => (FILE, *size, b""),
            Kind::Dir => (DIR, 0, b""),
            Kind::Symlink { target } => (SYMLINK, 0, target),
            Kind::Char { major, minor } => (CHAR, device(*major, *minor), b""),
            Kind::Block { major, minor } => (BLOCK, device(*major, *minor), b""),
            Kind::Fifo => (FIFO, 0, b""),
        };
        let small = |id: u64| u32::try_from(id).ok().filter(|&id| id != BIG_ID);
        let (uid, gid) = match (small(meta.uid), small(meta.gid)) {
            (Some(uid), Some(gid)) => (uid, gid),
            _ => (BIG_ID, BIG_ID),
        };
        let big = uid == BIG_ID;
        let extra = if kind == SYMLINK || !meta.xattrs.is_empty() || big {
            self.extras.push(Extra {
                target: target.into(),
                xattrs: meta.xattrs.clone().into_boxed_slice(),
                ids: big.then(|| Box::new((meta.uid, meta.gid))),
            });
            (self.extras.len() - 1) as u32
        } else {
            NONE
        };
        self.recs.push(Rec {
            sec: meta.mtime.sec,
            data,
            uid,
            gid,
            nsec: meta.mtime.nsec,
            mode: meta.mode,
            extra,
            kind,
        });
        (self.recs.len() - 1) as u32
    }

    /// The metadata at `i`.
    pub fn get(&self, i: u32) -> Meta {
        let r = &self.recs[i as usize];
        let extra = self.extra(r);
        let (major, minor) = ((r.data >> 32) as u32, r.data as u32);
        let kind = match r.kind {
            FILE => Kind::File { size: r.data },
            DIR => Kind::Dir,
            SYMLINK => Kind::Symlink {
                target: extra.map(|e| e.target.to_vec()).unwrap_or_default(),
            },
            CHAR => Kind::Char { major, minor },
            BLOCK => Kind::Block { major, minor },
            _ => Kind::Fifo,
        };
        let (uid, gid) = self.ids(r);
        Meta {
            kind,
            mode: r.mode,
            uid,
            gid,
            mtime: Time {
                sec: r.sec,
                nsec: r.nsec,
            },
            xattrs: extra.map(|e| e.xattrs.to_vec()).unwrap_or_default(),
        }
    }

    fn extra(&self, r: &Rec) -> Option<&Extra> {
        (r.extra != NONE).then(|| &self.extras[r.extra as usize])
    }

    fn ids(&self, r: &Rec) -> (u64, u64) {
        match self.extra(r).and_then(|e| e.ids.as_deref()) {
            Some(&ids) => ids,
            None => (r.uid.into(), r.gid.into()),
        }
    }

    /// Whether entry `i` is a directory.
    pub fn is_dir(&self, i: u32) -> bool {
        self.recs[i as usize].kind == DIR
    }

    /// The target of entry `i` when it is a symlink.
    pub fn symlink(&self, i: u32) -> Option<&[u8]> {
        let r = &self.recs[i as usize];
        (r.kind == SYMLINK).then(|| self.extra(r).map_or(&b""[..], |e| &e.target))
    }

    /// A regular file's size (0 for anything else).
    pub fn file_size(&self, i: u32) -> u64 {
        let r = &self.recs[i as usize];
        if r.kind == FILE {
            r.data
        } else {
            0
        }
    }

    /// Whether entries `i` and `j` have the same type (whatever their data).
    pub fn same_type(&self, i: u32, other: &Metas, j: u32) -> bool {
        self.recs[i as usize].kind == other.recs[j as usize].kind
    }

    /// Whether entry `i` here and entry `j` of `other` say the same.
    pub fn same(&self, i: u32, other: &Metas, j: u32) -> bool {
        let (a, b) = (&self.recs[i as usize], &other.recs[j as usize]);
        let fixed = |r: &Rec| (r.sec, r.data, r.uid, r.gid, r.nsec, r.mode, r.kind);
        fixed(a) == fixed(b) && self.extra(a) == other.extra(b) && self.ids(a) == other.ids(b)
    }

    /// Gives entry `i` the owner and time of `meta` (a kept directory link).
    pub fn set_owner_and_time(&mut self, i: u32, meta: &Meta) {
        let mut now = self.get(i);
        now.uid = meta.uid;
        now.gid = meta.gid;
        now.mtime = meta.mtime;
        self.replace(i, &now);
    }

    /// Makes entry `i` say `meta`.
    pub fn replace(&mut self, i: u32, meta: &Meta) {
        let j = self.push(meta);
        self.recs[i as usize] = self.recs.pop().expect("just pushed");
        debug_assert_eq!(j as usize, self.recs.len());
    }
}

fn device(major: u32, minor: u32) -> u64 {
    (u64::from(major) << 32) | u64::from(minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_comes_back_as_it_went_in() {
        let meta = |kind, xattrs| Meta {
            kind,
            mode: 0o4755,
            uid: u64::from(u32::MAX) + 7,
            gid: 5678,
            mtime: Time { sec: -5, nsec: 7 },
            xattrs,
        };
        let x = vec![(b"user.a".to_vec(), vec![0, 1, 2])];
        let all = [
            meta(Kind::File { size: u64::MAX }, vec![]),
            meta(Kind::File { size: 3 }, x.clone()),
            meta(Kind::Dir, x.clone()),
            meta(
                Kind::Symlink {
                    target: b"/x\ny".to_vec(),
                },
                vec![],
            ),
            meta(Kind::Symlink { target: Vec::new() }, x),
            meta(
                Kind::Char {
                    major: u32::MAX,
                    minor: 3,
                },
                vec![],
            ),
            meta(
                Kind::Block {
                    major: 259,
                    minor: u32::MAX,
                },
                vec![],
            ),
            meta(Kind::Fifo, vec![]),
            Meta {
                uid: 3,
                gid: u64::from(u32::MAX),
                ..meta(Kind::Dir, vec![])
            },
            Meta {
                uid: 3,
                gid: 4,
                ..meta(Kind::Dir, vec![])
            },
        ];
        let mut metas = Metas::default();
        for m in &all {
            let i = metas.push(m);
            assert_eq!(&metas.get(i), m);
            assert!(metas.same(i, &metas.clone(), i));
        }
        // A kept directory link takes an owner of any size.
        let link = metas.push(&all[3]);
        for owner in [&all[0], &all[9]] {
            metas.set_owner_and_time(link, owner);
            let got = metas.get(link);
            assert_eq!((got.uid, got.gid, got.mtime), (owner.uid, owner.gid, owner.mtime));
            assert_eq!(got.kind, all[3].kind);
        }
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate() {
                assert_eq!(metas.same(i as u32, &metas, j as u32), a == b, "{a:?} {b:?}");
                assert_eq!(metas.same_type(i as u32, &metas, j as u32), a.kind.same_type(&b.kind));
            }
        }
    }
}
