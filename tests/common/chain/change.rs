//! Changes with their targets resolved, made to a real tree: each is
//! checked against the tree first (its target there and of the right kind,
//! every parent a real directory, the tree not full), so a chain with
//! changes taken out still applies, and nothing is ever done through a
//! symlink.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, Permissions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps};
use walkdir::WalkDir;

use super::super::tree::escape;
use super::{components, Avoid};

/// Most entries a tree gets, `image/` and `image/config.xml` included.
pub const MAX_ENTRIES: usize = 30;

/// An mtime at or after this (2023) was set by the kernel while the test
/// ran: explicit ones are from 2017 to 2019, stand-ins from 2020.
pub(super) const KERNEL_TIMES: i64 = 1_700_000_000;

/// One change with its targets resolved: what [`run_step`] made and
/// [`replay_step`] makes again.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new file of `len` bytes made from `seed`.
    Write {
        path: Vec<u8>,
        len: u16,
        seed: u8,
    },
    /// A new directory.
    Mkdir {
        path: Vec<u8>,
    },
    /// A new symlink.
    Symlink {
        path: Vec<u8>,
        target: Vec<u8>,
    },
    /// A new fifo or device node.
    Mknod {
        path: Vec<u8>,
        node: NodeKind,
    },
    /// An entry removed, a directory with everything in it.
    Remove {
        path: Vec<u8>,
    },
    /// A second name `path` for `source`.
    HardLink {
        source: Vec<u8>,
        path: Vec<u8>,
    },
    /// A hard-linked name replaced by a new file.
    BreakLink {
        path: Vec<u8>,
        same_content: bool,
    },
    Chmod {
        path: Vec<u8>,
        mode: u32,
    },
    Chown {
        path: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    SetXattr {
        path: Vec<u8>,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    RemoveXattr {
        path: Vec<u8>,
        name: Vec<u8>,
    },
    SetMtime {
        path: Vec<u8>,
        secs: i64,
        nsec: u32,
    },
    /// The nanoseconds of the mtime set to `nsec` (or the next one, when
    /// they are `nsec` already), the seconds kept.
    NsecOnly {
        path: Vec<u8>,
        nsec: u32,
    },
    /// Every byte xored with `seed`, in place; `keep_mtime` puts the old
    /// mtime back.
    Rewrite {
        path: Vec<u8>,
        seed: u8,
        keep_mtime: bool,
    },
}

impl Change {
    /// The kind of change, for statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Write { .. } => "write",
            Change::Mkdir { .. } => "mkdir",
            Change::Symlink { .. } => "symlink",
            Change::Mknod { .. } => "mknod",
            Change::Remove { .. } => "remove",
            Change::HardLink { .. } => "hard link",
            Change::BreakLink { .. } => "break link",
            Change::Chmod { .. } => "chmod",
            Change::Chown { .. } => "chown",
            Change::SetXattr { .. } => "set xattr",
            Change::RemoveXattr { .. } => "remove xattr",
            Change::SetMtime { .. } => "set mtime",
            Change::NsecOnly { .. } => "nsec only",
            Change::Rewrite { keep_mtime: false, .. } => "rewrite",
            Change::Rewrite { keep_mtime: true, .. } => "rewrite, mtime kept",
        }
    }
}

/// A fifo or a device node with its numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NodeKind {
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
}

/// The KIWI description a stash needs: no op touches it.
pub(super) fn protected(path: &[u8]) -> bool {
    path.is_empty() || path == b"image" || path.starts_with(b"image/")
}

/// Whether an xattr `name` may go on an entry: `user.*` on files and
/// directories (the kernel allows no other), `security.capability` on files.
pub(super) fn xattr_fits(file: bool, dir: bool, name: &[u8], avoid: &Avoid) -> bool {
    if name == b"security.capability" {
        file
    } else {
        file || (dir && !avoid.dir_xattrs)
    }
}

/// What is at a path, found without following symlinks anywhere on it.
enum Found {
    /// Nothing, in a real directory.
    Missing,
    /// An entry, in a real directory.
    Entry(fs::Metadata),
    /// A parent is missing or not a real directory: nothing may be done there.
    Unsafe,
}

fn find(root: &Path, path: &[u8]) -> Found {
    if protected(path) {
        return Found::Unsafe;
    }
    let mut at = root.to_path_buf();
    for parent in components(parent_of(path)) {
        at.push(OsStr::from_bytes(&parent));
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            _ => return Found::Unsafe,
        }
    }
    match fs::symlink_metadata(abs(root, path)) {
        Ok(meta) => Found::Entry(meta),
        Err(_) => Found::Missing,
    }
}

fn entries(root: &Path) -> usize {
    WalkDir::new(root).min_depth(1).into_iter().count()
}

/// Makes `change` if it fits the tree; what was done, as a line.
pub(super) fn execute(root: &Path, change: &Change, avoid: &Avoid) -> Option<String> {
    use Change::*;
    let path = match change {
        Write { path, .. } | Mkdir { path } | Symlink { path, .. } | Mknod { path, .. } | Remove { path } => path,
        HardLink { path, .. } | BreakLink { path, .. } | Chmod { path, .. } | Chown { path, .. } => path,
        SetXattr { path, .. } | RemoveXattr { path, .. } | SetMtime { path, .. } | NsecOnly { path, .. } => path,
        Rewrite { path, .. } => path,
    };
    let found = find(root, path);
    let at = abs(root, path);
    let p = show(path);
    let meta = match (&found, change) {
        (Found::Unsafe, _) => return None,
        (Found::Missing, Write { .. } | Mkdir { .. } | Symlink { .. } | Mknod { .. } | HardLink { .. }) => {
            if entries(root) >= MAX_ENTRIES {
                return None;
            }
            None
        }
        (Found::Missing, _) => return None,
        (Found::Entry(_), Write { .. } | Mkdir { .. } | Symlink { .. } | Mknod { .. } | HardLink { .. }) => {
            return None
        }
        (Found::Entry(meta), _) => Some(meta),
    };
    let is = |want: fn(&fs::Metadata) -> bool| meta.is_some_and(want);
    match change {
        Write { len, seed, .. } => {
            let bytes = content(usize::from(*len), *seed);
            fs::write(&at, &bytes).unwrap();
            Some(format!("write {p} ({} bytes)", bytes.len()))
        }
        Mkdir { .. } => {
            fs::create_dir(&at).unwrap();
            Some(format!("mkdir {p}"))
        }
        Symlink { target, .. } => {
            symlink(OsStr::from_bytes(target), &at).unwrap();
            Some(format!("ln -s {} {p}", show(target)))
        }
        Mknod { node, .. } => {
            let (kind, (major, minor), shown) = match *node {
                NodeKind::Fifo => (FileType::Fifo, (0, 0), "mkfifo".to_string()),
                NodeKind::Char(major, minor) => (
                    FileType::CharacterDevice,
                    (major, minor),
                    format!("mknod c {major} {minor}"),
                ),
                NodeKind::Block(major, minor) => (
                    FileType::BlockDevice,
                    (major, minor),
                    format!("mknod b {major} {minor}"),
                ),
            };
            let dev = rustix::fs::makedev(major, minor);
            rustix::fs::mknodat(rustix::fs::CWD, &at, kind, Mode::from_raw_mode(0o644), dev)
                .unwrap_or_else(|e| panic!("{shown} {}: {e}", at.display()));
            Some(format!("{shown} {p}"))
        }
        Remove { .. } => {
            if is(fs::Metadata::is_dir) {
                // remove_dir_all does not follow symlinks inside.
                fs::remove_dir_all(&at).unwrap();
                Some(format!("rm -r {p}"))
            } else {
                fs::remove_file(&at).unwrap();
                Some(format!("rm {p}"))
            }
        }
        HardLink { source, .. } => {
            let Found::Entry(source_meta) = find(root, source) else {
                return None;
            };
            let fits = source_meta.is_file() || (!avoid.node_links && !source_meta.is_dir());
            if !fits {
                return None;
            }
            fs::hard_link(abs(root, source), &at).unwrap();
            Some(format!("ln {} {p}", show(source)))
        }
        BreakLink { same_content, .. } => {
            if !is(|m| m.is_file() && m.nlink() > 1) {
                return None;
            }
            let mut bytes = fs::read(&at).unwrap();
            if !same_content {
                bytes.iter_mut().for_each(|b| *b ^= 0x5a);
            }
            fs::remove_file(&at).unwrap();
            fs::write(&at, &bytes).unwrap();
            let how = if *same_content { "same" } else { "new" };
            Some(format!(
                "rm {p}; write {p} ({} bytes, {how} content): a hard link broken",
                bytes.len()
            ))
        }
        Chmod { mode, .. } => {
            if is(|m| m.file_type().is_symlink()) {
                return None;
            }
            fs::set_permissions(&at, Permissions::from_mode(*mode)).unwrap();
            Some(format!("chmod {mode:04o} {p}"))
        }
        Chown { uid, gid, .. } => {
            lchown(&at, Some(*uid), Some(*gid)).unwrap();
            Some(format!("chown -h {uid}:{gid} {p}"))
        }
        SetXattr { name, value, .. } => {
            if !xattr_fits(is(fs::Metadata::is_file), is(fs::Metadata::is_dir), name, avoid) {
                return None;
            }
            xattr::set(&at, OsStr::from_bytes(name), value).unwrap();
            Some(format!("setfattr -h -n {} -v {} {p}", show(name), hex(value)))
        }
        RemoveXattr { name, .. } => {
            xattr::get(&at, OsStr::from_bytes(name)).unwrap()?;
            xattr::remove(&at, OsStr::from_bytes(name)).unwrap();
            Some(format!("setfattr -h -x {} {p}", show(name)))
        }
        SetMtime { secs, nsec, .. } => {
            set_mtime(&at, *secs, *nsec);
            Some(format!("touch -h -d @{secs}.{nsec:09} {p}"))
        }
        NsecOnly { nsec, .. } => {
            if avoid.nsec {
                return None;
            }
            let (secs, old) = mtime(&at);
            let nsec = if *nsec == old { (old + 1) % 1_000_000_000 } else { *nsec };
            set_mtime(&at, secs, nsec);
            Some(format!(
                "touch -h -d @{secs}.{nsec:09} {p} (was @{secs}.{old:09}: only the nanoseconds change)"
            ))
        }
        Rewrite { seed, keep_mtime, .. } => {
            if !is(|m| m.is_file() && m.len() > 0) {
                return None;
            }
            Some(rewrite(&at, &p, *seed, *keep_mtime && !avoid.same_mtime))
        }
    }
}

fn rewrite(at: &Path, p: &str, seed: u8, keep_mtime: bool) -> String {
    let before = mtime(at);
    let mut file = fs::OpenOptions::new().read(true).write(true).open(at).unwrap();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    bytes.iter_mut().for_each(|b| *b ^= seed);
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(&bytes).unwrap();
    drop(file);
    if keep_mtime {
        set_mtime(at, before.0, before.1);
        return format!(
            "rewrite {p} in place (same {} bytes), then touch -h -d @{}.{:09} {p}: its mtime kept",
            bytes.len(),
            before.0,
            before.1
        );
    }
    if mtime(at) == before {
        // Within one tick of the kernel's clock: make the change show.
        set_mtime(at, before.0, (before.1 + 1) % 1_000_000_000);
    }
    format!("rewrite {p} in place (same {} bytes)", bytes.len())
}

/// Moves every mtime at or after [`KERNEL_TIMES`] to `stand_in`; how many.
pub(super) fn replace_kernel_times(root: &Path, stand_in: i64) -> usize {
    let mut moved = 0;
    for entry in WalkDir::new(root).min_depth(1).follow_links(false) {
        let path = entry.unwrap().into_path();
        if mtime(&path).0 >= KERNEL_TIMES {
            set_mtime(&path, stand_in, 0);
            moved += 1;
        }
    }
    moved
}

pub(super) fn mtime(path: &Path) -> (i64, u32) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.mtime(), meta.mtime_nsec() as u32)
}

/// Sets atime and mtime of `path` itself, not of a symlink's target.
pub(super) fn set_mtime(path: &Path, secs: i64, nsec: u32) {
    let time = Timespec {
        tv_sec: secs,
        tv_nsec: i64::from(nsec),
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", path.display()));
}

/// `len` bytes made from `seed` (xorshift), the same for the same arguments.
pub(super) fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// `security.capability` (`struct vfs_cap_data`, revision 2) permitting one
/// capability, effective when `seed` is odd.
pub(super) fn capability_value(seed: u8) -> Vec<u8> {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    let effective = u32::from(seed & 1);
    let permitted = 1u32 << (seed % 32);
    [VFS_CAP_REVISION_2 | effective, permitted, 0, 0, 0]
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "\"\"".to_string();
    }
    let mut shown = "0x".to_string();
    for byte in bytes {
        write!(shown, "{byte:02x}").unwrap();
    }
    shown
}

/// A path or name as typed in a shell: bare when plain, else quoted with escapes.
pub fn show(bytes: &[u8]) -> String {
    let plain = bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"._-/@:".contains(b));
    if plain && !bytes.is_empty() {
        String::from_utf8(bytes.to_vec()).unwrap()
    } else {
        escape(bytes)
    }
}

pub(super) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

pub(super) fn parent_of(path: &[u8]) -> &[u8] {
    path.iter()
        .rposition(|&b| b == b'/')
        .map_or(b"".as_slice(), |i| &path[..i])
}

pub(super) fn abs(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}
