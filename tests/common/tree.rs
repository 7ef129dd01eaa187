//! Build a root tree full of edge cases, and snapshot and compare trees, so
//! tests can prove that a stash keeps every detail of a root filesystem.
//!
//! Needs root: it creates device nodes, sets foreign owners and writes
//! `security.capability`. The node, fifo and symlink-time steps run
//! `mknod`, `mkfifo` and `touch -h` (coreutils) instead of adding `libc`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use walkdir::WalkDir;

/// What an entry is, with the data that identifies its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file: its size and the lowercase hex sha256 of its content.
    File { size: u64, sha256: String },
    /// A symbolic link and its target, as bytes.
    Symlink { target: Vec<u8> },
    /// A named pipe.
    Fifo,
    /// A unix socket (tar cannot store these; listed so they are noticed).
    Socket,
    /// A character device node.
    CharDevice { major: u32, minor: u32 },
    /// A block device node.
    BlockDevice { major: u32, minor: u32 },
}

/// Everything a root filesystem stash must keep about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The type and content.
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky: `st_mode & 0o7777`.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time in whole seconds, of the entry itself: for a
    /// symlink the link's own time (what `lutimes` sets), not the target's.
    pub mtime: i64,
    /// The nanoseconds of the modification time: always 0 in a snapshot
    /// taken with [`snapshot`] or [`snapshot_excluding`], which compare whole
    /// seconds; read from disk by [`snapshot_nanos`].
    pub mtime_nsec: u32,
    /// All extended attributes, name to raw value, including
    /// `security.capability` and `system.posix_acl_*`.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For a non-directory that shares its inode with other names in the
    /// same snapshot: the smallest of those paths. `None` otherwise.
    pub link_group: Option<Vec<u8>>,
}

/// A whole tree: path relative to the root, as bytes, to its entry. The
/// root directory itself is not in it (its metadata belongs to whoever
/// created the directory, not to the tree).
pub type Snapshot = BTreeMap<Vec<u8>, Entry>;

/// Base of the fixed, distinct mtimes `make_special_tree` sets (2020-09-13).
const MTIME_BASE: u64 = 1_600_000_000;
/// Uid and gid of the entries owned by a non-root user.
const USER: (u32, u32) = (1234, 5678);
/// How many differences `assert_same_tree` prints.
const SHOWN_DIFFERENCES: usize = 25;

/// Builds in `root` (created if missing) a small tree with every kind of
/// entry a root filesystem stash must keep: file contents, hard links across
/// directories, absolute, relative, dangling and directory symlinks
/// (`bin -> usr/bin`), a fifo, character and block devices, setuid/setgid
/// and sticky modes, non-root owners, `security.capability`, `user.*` and
/// POSIX ACL xattrs, non-UTF-8, newline and long names, empty files and
/// directories, a 1 MiB file, fixed past mtimes on everything, and the
/// `dev/`, `proc/`, `sys/` and `image/config.xml` of a KIWI root.
/// The same call on two directories gives equal snapshots.
pub fn make_special_tree(root: &Path) {
    assert!(
        is_root(),
        "make_special_tree needs root: device nodes, owners, capabilities"
    );
    fs::create_dir_all(root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
    add_files(root);
    add_symlinks(root);
    add_nodes(root);
    // Owners first: chown clears setuid bits and security.capability.
    add_owners_and_modes(root);
    add_xattrs(root);
    add_odd_names(root);
    add_kiwi_root(root);
    // Last, since creating entries changes their directory's mtime.
    set_fixed_mtimes(root);
}

fn is_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"));
    // Real, effective, saved, filesystem: the effective one decides.
    uids.and_then(|uids| uids.split_whitespace().nth(1)) == Some("0")
}

fn add_files(root: &Path) {
    write(root, "usr/bin/tool", b"#!/bin/sh\necho tool\n");
    chmod(&root.join("usr/bin/tool"), 0o755);
    write(root, "usr/share/doc/kiwi/README", b"a file in a subdirectory\n");
    write(root, "etc/hostname", b"special-tree\n");
    write(root, "etc/empty", b"");
    mkdir(root, "srv/empty");
    write(root, "var/lib/big.bin", &pseudo_random_bytes(1024 * 1024 + 77));
    let first = write(root, "usr/bin/hardlinked", b"one inode, three names\n");
    for other in ["usr/sbin/hardlinked-too", "etc/hardlinked-three"] {
        hard_link(&first, &root.join(other));
    }
}

fn add_symlinks(root: &Path) {
    mkdir(root, "usr/sbin");
    link(root, "bin", "usr/bin");
    link(root, "sbin", "usr/sbin");
    link(root, "etc/absolute", "/usr/bin/tool");
    link(root, "usr/bin/relative", "../share/doc/kiwi/README");
    link(root, "etc/dangling", "../nowhere/at/all");
}

fn add_nodes(root: &Path) {
    mkdir(root, "devices");
    mkdir(root, "var/spool");
    let fifo = root.join("var/spool/fifo");
    run(Command::new("mkfifo").args(["-m", "0620"]).arg(&fifo));
    let null = root.join("devices/null");
    run(Command::new("mknod")
        .args(["-m", "0666"])
        .arg(&null)
        .args(["c", "1", "3"]));
    let loop0 = root.join("devices/loop0");
    run(Command::new("mknod")
        .args(["-m", "0660"])
        .arg(&loop0)
        .args(["b", "7", "0"]));
    chown(&loop0, 0, 6);
}

fn add_owners_and_modes(root: &Path) {
    let suid = write(root, "usr/bin/suid", b"#!/bin/sh\nid\n");
    chown(&suid, 0, USER.1);
    chmod(&suid, 0o6755);
    mkdir(root, "tmp");
    chmod(&root.join("tmp"), 0o1777);
    let home = mkdir(root, "home/user");
    let file = write(root, "home/user/notes", b"owned by a user\n");
    let user_link = link(root, "home/user/link", "notes");
    for path in [&home, &file, &user_link] {
        chown(path, USER.0, USER.1);
    }
    chmod(&home, 0o700);
    chmod(&file, 0o640);
}

fn add_xattrs(root: &Path) {
    let ping = write(root, "usr/bin/ping", b"#!/bin/sh\necho pong\n");
    chmod(&ping, 0o755);
    set_xattr(&ping, "security.capability", &cap_net_raw_ep());
    let noted = write(root, "etc/noted", b"has user xattrs\n");
    set_xattr(&noted, "user.kiwi.note", b"stackbuild");
    set_xattr(&noted, "user.kiwi.binary", &[0, 1, 2, 0xff]);
    let acl_file = write(root, "srv/acl-file", b"has an access ACL\n");
    set_xattr(&acl_file, "system.posix_acl_access", &access_acl());
    let acl_dir = mkdir(root, "srv/acl-dir");
    set_xattr(&acl_dir, "system.posix_acl_default", &default_acl());
}

fn add_odd_names(root: &Path) {
    let names = mkdir(root, "names");
    fs::write(names.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name\n").unwrap();
    fs::write(names.join("new\nline"), b"newline in the name\n").unwrap();
    fs::write(names.join("with space"), b"space in the name\n").unwrap();
    // Over tar's 100-byte name field, so a PAX or GNU long name is needed.
    let long = "long-".repeat(30);
    fs::write(names.join(&long), b"long name\n").unwrap();
    symlink(format!("../names/{long}"), names.join("long-target")).unwrap();
}

fn add_kiwi_root(root: &Path) {
    write(root, "image/config.xml", KIWI_CONFIG.as_bytes());
    let null = root.join("dev/null");
    mkdir(root, "dev");
    run(Command::new("mknod")
        .args(["-m", "0666"])
        .arg(&null)
        .args(["c", "1", "3"]));
    link(root, "dev/fd", "/proc/self/fd");
    write(root, "proc/cpuinfo", b"processor\t: 0\n");
    write(root, "sys/kernel/uevent_seqnum", b"42\n");
}

/// A tiny description, so the tree looks like a KIWI root.
const KIWI_CONFIG: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="special-tree">
    <description type="system">
        <author>kiwi-stackbuild tests</author>
        <contact>tests@example.invalid</contact>
        <specification>tree with every kind of entry</specification>
    </description>
    <preferences>
        <version>1.0.0</version>
        <packagemanager>apt</packagemanager>
        <type image="tbz"/>
    </preferences>
</image>
"#;

fn set_fixed_mtimes(root: &Path) {
    let mut paths: Vec<PathBuf> = WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|item| item.expect("walking the special tree").into_path())
        .collect();
    // Sorted, so the two trees of a comparison get the same times.
    paths.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    for (index, path) in paths.iter().enumerate() {
        set_mtime(path, MTIME_BASE + 3607 * index as u64);
    }
}

/// `security.capability` for `cap_net_raw+ep`: a little-endian
/// `struct vfs_cap_data` at revision 2 (magic, then permitted and
/// inheritable words for capabilities 0-31 and 32-63).
fn cap_net_raw_ep() -> Vec<u8> {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x1;
    const CAP_NET_RAW: u32 = 13;
    let words = [VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, 1 << CAP_NET_RAW, 0, 0, 0];
    words.iter().flat_map(|word| word.to_le_bytes()).collect()
}

const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// `user::rw-,user:1234:r--,group::r--,mask::r--,other::---`
fn access_acl() -> Vec<u8> {
    posix_acl(&[
        (ACL_USER_OBJ, 6, ACL_UNDEFINED_ID),
        (ACL_USER, 4, USER.0),
        (ACL_GROUP_OBJ, 4, ACL_UNDEFINED_ID),
        (ACL_MASK, 4, ACL_UNDEFINED_ID),
        (ACL_OTHER, 0, ACL_UNDEFINED_ID),
    ])
}

/// `default:user::rwx,group::r-x,group:5678:rwx,mask::rwx,other::r-x`
fn default_acl() -> Vec<u8> {
    posix_acl(&[
        (ACL_USER_OBJ, 7, ACL_UNDEFINED_ID),
        (ACL_GROUP_OBJ, 5, ACL_UNDEFINED_ID),
        (ACL_GROUP, 7, USER.1),
        (ACL_MASK, 7, ACL_UNDEFINED_ID),
        (ACL_OTHER, 5, ACL_UNDEFINED_ID),
    ])
}

/// The kernel's `posix_acl_xattr` encoding: version 2, then per entry a
/// tag, permissions and id, little endian, sorted by tag and id.
fn posix_acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut value = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        value.extend(tag.to_le_bytes());
        value.extend(perm.to_le_bytes());
        value.extend(id.to_le_bytes());
    }
    value
}

/// Deterministic bytes (xorshift64), so two builds have the same content.
fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend(state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn write(root: &Path, rel: &str, content: &[u8]) -> PathBuf {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    }
    fs::write(&path, content).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

fn mkdir(root: &Path, rel: &str) -> PathBuf {
    let path = root.join(rel);
    fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    path
}

fn link(root: &Path, rel: &str, target: &str) -> PathBuf {
    let path = root.join(rel);
    symlink(target, &path).unwrap_or_else(|e| panic!("linking {}: {e}", path.display()));
    path
}

fn hard_link(existing: &Path, new: &Path) {
    fs::create_dir_all(new.parent().unwrap()).unwrap();
    fs::hard_link(existing, new).unwrap_or_else(|e| panic!("linking {}: {e}", new.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn chown(path: &Path, uid: u32, gid: u32) {
    lchown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    xattr::set(path, name, value).unwrap_or_else(|e| panic!("setting {name} on {}: {e}", path.display()));
}

fn set_mtime(path: &Path, secs: u64) {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.is_file() || meta.is_dir() {
        let time = UNIX_EPOCH + Duration::from_secs(secs);
        File::open(path)
            .and_then(|file| file.set_modified(time))
            .unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", path.display()));
    } else {
        // std has no lutimes; opening a fifo or device would block or act.
        run(Command::new("touch").args(["-h", "-d", &format!("@{secs}")]).arg(path));
    }
}

fn run(command: &mut Command) {
    let status = command.status().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(status.success(), "{command:?} failed: {status}");
}

/// Snapshot of every entry below `root` (symlinks not followed).
pub fn snapshot(root: &Path) -> Snapshot {
    snapshot_excluding(root, &[])
}

/// Snapshot of every entry below `root`, leaving out what lies under the
/// given relative paths but keeping those paths themselves: with
/// `[b"dev"]` it holds `dev` but nothing in it, as a stash does.
pub fn snapshot_excluding(root: &Path, under: &[&[u8]]) -> Snapshot {
    let mut tree = snapshot_nanos_excluding(root, under);
    for entry in tree.values_mut() {
        entry.mtime_nsec = 0;
    }
    tree
}

/// Like [`snapshot`], with mtimes to the nanosecond (`mtime_nsec`), so that
/// [`tree_diff`] also tells times apart that differ within a second.
pub fn snapshot_nanos(root: &Path) -> Snapshot {
    snapshot_nanos_excluding(root, &[])
}

/// Like [`snapshot_excluding`], with mtimes to the nanosecond.
pub fn snapshot_nanos_excluding(root: &Path, under: &[&[u8]]) -> Snapshot {
    let mut tree = Snapshot::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    let walk = WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_entry(|item| !is_under(&relative(root, item.path()), under));
    for item in walk {
        let item = item.unwrap_or_else(|e| panic!("walking {}: {e}", root.display()));
        let path = relative(root, item.path());
        let meta =
            fs::symlink_metadata(item.path()).unwrap_or_else(|e| panic!("reading {}: {e}", item.path().display()));
        if !meta.is_dir() && meta.nlink() > 1 {
            inodes.entry((meta.dev(), meta.ino())).or_default().push(path.clone());
        }
        tree.insert(path, read_entry(item.path(), &meta));
    }
    mark_link_groups(&mut tree, inodes.into_values());
    tree
}

fn relative(root: &Path, path: &Path) -> Vec<u8> {
    path.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec()
}

fn is_under(path: &[u8], prefixes: &[&[u8]]) -> bool {
    prefixes.iter().any(|prefix| {
        let prefix = prefix.strip_suffix(b"/").unwrap_or(prefix);
        path.len() > prefix.len() && path.starts_with(prefix) && path[prefix.len()] == b'/'
    })
}

fn read_entry(path: &Path, meta: &fs::Metadata) -> Entry {
    Entry {
        kind: read_kind(path, meta),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec() as u32,
        xattrs: read_xattrs(path),
        link_group: None,
    }
}

fn read_kind(path: &Path, meta: &fs::Metadata) -> Kind {
    let file_type = meta.file_type();
    let (major, minor) = split_device(meta.rdev());
    if file_type.is_dir() {
        Kind::Dir
    } else if file_type.is_file() {
        Kind::File {
            size: meta.len(),
            sha256: sha256_file(path),
        }
    } else if file_type.is_symlink() {
        let target = fs::read_link(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Kind::Symlink {
            target: target.into_os_string().into_encoded_bytes(),
        }
    } else if file_type.is_fifo() {
        Kind::Fifo
    } else if file_type.is_char_device() {
        Kind::CharDevice { major, minor }
    } else if file_type.is_block_device() {
        Kind::BlockDevice { major, minor }
    } else {
        Kind::Socket
    }
}

/// Major and minor of a Linux `dev_t`, as glibc's `major()`/`minor()`.
fn split_device(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & 0xffff_f000);
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00);
    (major as u32, minor as u32)
}

fn sha256_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    File::open(path)
        .and_then(|mut file| io::copy(&mut file, &mut hasher))
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    format!("{:x}", hasher.finalize())
}

fn read_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let names = xattr::list(path).unwrap_or_else(|e| panic!("listing xattrs of {}: {e}", path.display()));
    names
        .filter_map(|name| {
            // Gone between list and get: nothing to record.
            let value = xattr::get(path, &name).ok().flatten()?;
            Some((name.as_bytes().to_vec(), value))
        })
        .collect()
}

fn mark_link_groups(tree: &mut Snapshot, groups: impl Iterator<Item = Vec<Vec<u8>>>) {
    for names in groups.filter(|names| names.len() > 1) {
        let first = names.iter().min().unwrap().clone();
        for name in &names {
            tree.get_mut(name).unwrap().link_group = Some(first.clone());
        }
    }
}

/// Every difference between two snapshots, one readable line each, in
/// path order: missing and unexpected entries, then field by field.
pub fn tree_diff(expected: &Snapshot, actual: &Snapshot) -> Vec<String> {
    let paths: BTreeSet<&Vec<u8>> = expected.keys().chain(actual.keys()).collect();
    let mut diffs = Vec::new();
    for path in paths {
        let shown = escape(path);
        match (expected.get(path), actual.get(path)) {
            (Some(want), None) => diffs.push(format!("{shown}: missing ({})", describe_kind(&want.kind))),
            (None, Some(got)) => diffs.push(format!("{shown}: unexpected ({})", describe_kind(&got.kind))),
            (Some(want), Some(got)) => {
                diffs.extend(entry_diff(want, got).into_iter().map(|diff| format!("{shown}: {diff}")))
            }
            (None, None) => unreachable!(),
        }
    }
    diffs
}

/// Panics with the first differences between two snapshots, if any.
pub fn assert_same_tree(expected: &Snapshot, actual: &Snapshot) {
    let diffs = tree_diff(expected, actual);
    if diffs.is_empty() {
        return;
    }
    let mut report = format!(
        "trees differ in {} place(s) ({} entries expected, {} found):\n",
        diffs.len(),
        expected.len(),
        actual.len()
    );
    for diff in diffs.iter().take(SHOWN_DIFFERENCES) {
        writeln!(report, "  {diff}").unwrap();
    }
    if diffs.len() > SHOWN_DIFFERENCES {
        writeln!(report, "  ... and {} more", diffs.len() - SHOWN_DIFFERENCES).unwrap();
    }
    panic!("{report}");
}

fn entry_diff(want: &Entry, got: &Entry) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut compare = |what: &str, want: String, got: String| {
        if want != got {
            diffs.push(format!("{what}: expected {want}, found {got}"));
        }
    };
    compare("type", describe_kind(&want.kind), describe_kind(&got.kind));
    compare("mode", format!("{:04o}", want.mode), format!("{:04o}", got.mode));
    compare(
        "owner",
        format!("{}:{}", want.uid, want.gid),
        format!("{}:{}", got.uid, got.gid),
    );
    compare("mtime", describe_mtime(want), describe_mtime(got));
    compare(
        "hard link group",
        describe_group(&want.link_group),
        describe_group(&got.link_group),
    );
    let names: BTreeSet<&Vec<u8>> = want.xattrs.keys().chain(got.xattrs.keys()).collect();
    for name in names {
        let value = |entry: &Entry| entry.xattrs.get(name).map_or("absent".to_string(), |v| escape(v));
        compare(&format!("xattr {}", escape(name)), value(want), value(got));
    }
    diffs
}

/// Whole seconds as before; `seconds.nanoseconds` where there are any.
fn describe_mtime(entry: &Entry) -> String {
    match entry.mtime_nsec {
        0 => entry.mtime.to_string(),
        nsec => format!("{}.{nsec:09}", entry.mtime),
    }
}

fn describe_kind(kind: &Kind) -> String {
    match kind {
        Kind::Dir => "directory".to_string(),
        Kind::File { size, sha256 } => format!("file of {size} bytes, sha256 {sha256}"),
        Kind::Symlink { target } => format!("symlink to {}", escape(target)),
        Kind::Fifo => "fifo".to_string(),
        Kind::Socket => "socket".to_string(),
        Kind::CharDevice { major, minor } => format!("character device {major}:{minor}"),
        Kind::BlockDevice { major, minor } => format!("block device {major}:{minor}"),
    }
}

fn describe_group(group: &Option<Vec<u8>>) -> String {
    group
        .as_ref()
        .map_or("none".to_string(), |first| format!("with {}", escape(first)))
}

/// Bytes as a quoted string: UTF-8 shown with Rust's debug escapes (so a
/// newline is `\n`), other bytes as `\xNN`: `b"caf\xe9"` gives `"caf\xe9"`.
pub fn escape(bytes: &[u8]) -> String {
    let mut shown = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        shown.extend(chunk.valid().escape_debug());
        for byte in chunk.invalid() {
            write!(shown, "\\x{byte:02x}").unwrap();
        }
    }
    shown.push('"');
    shown
}
