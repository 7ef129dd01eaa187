//! Layers: the one model of what a tar layer says and does.
//!
//! - [`tarball`] reads the tar format (ustar, GNU, PAX), and [`read`] turns
//!   a layer blob into one stream of normalised changes, verifying the blob
//!   over its whole length;
//! - [`apply`] is the only place that decides what a change does to a tree
//!   (umoci's semantics: whiteouts, opaque markers, `--keep-dirlinks`,
//!   clobbering, symlinks resolved inside the root), over a [`apply::Target`];
//! - [`extract`] is that target on disk (the confined unpacker), [`tree`] in
//!   memory (deltas, the tree cache, replay); [`scan`] reads a root on disk,
//!   and both keep entries packed ([`compact`]);
//! - [`write`] writes a tree, or what changed since a lower one, as a layer,
//!   which [`compress`] compresses (gzip or zstd) on every core;
//! - [`cache`] keeps the trees of stored images beside the store.

pub(crate) mod apply;
pub(crate) mod cache;
pub(crate) mod compact;
pub mod compress;
pub mod extract;
pub(crate) mod read;
pub(crate) mod scan;
pub(crate) mod tarball;
pub(crate) mod tree;
pub(crate) mod write;

use std::path::PathBuf;

use crate::oci::{Descriptor, Digest};

/// An error that names its entry already, which may be an earlier one than
/// the entry at hand (a file written behind the applier's back).
#[derive(Debug)]
pub struct EntryError(pub String);

impl std::fmt::Display for EntryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EntryError {}

/// Prefix of a whiteout entry's base name.
pub const WHITEOUT: &[u8] = b".wh.";
/// Base name of an opaque-directory marker.
pub const OPAQUE: &[u8] = b".wh..wh..opq";

/// One layer of a stack: where its blob is, its descriptor and diff_id.
#[derive(Debug, Clone, PartialEq)]
pub struct StackedLayer {
    /// The layout holding the blob.
    pub layout: PathBuf,
    /// The layer descriptor.
    pub layer: Descriptor,
    /// Its uncompressed digest.
    pub diff_id: Digest,
}

/// A time as a layer records it: seconds since the epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Time {
    /// Whole seconds (negative before 1970).
    pub sec: i64,
    /// Nanoseconds, below 1e9.
    pub nsec: u32,
}

impl Time {
    /// `sec` seconds and no nanoseconds.
    pub fn secs(sec: i64) -> Time {
        Time { sec, nsec: 0 }
    }

    /// The time of the system clock now.
    pub fn now() -> Time {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            sec: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            nsec: since.subsec_nanos(),
        }
    }
}

/// The kind of an entry, with what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A regular file of this many bytes.
    File {
        /// Its size.
        size: u64,
    },
    /// A directory.
    Dir,
    /// A symbolic link and its target.
    Symlink {
        /// The target, as bytes.
        target: Vec<u8>,
    },
    /// A character device.
    Char {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    Block {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

impl Kind {
    /// A short word for messages.
    pub fn word(&self) -> &'static str {
        match self {
            Kind::File { .. } => "file",
            Kind::Dir => "directory",
            Kind::Symlink { .. } => "symlink",
            Kind::Char { .. } => "character device",
            Kind::Block { .. } => "block device",
            Kind::Fifo => "fifo",
        }
    }

    /// Whether `self` and `other` are the same kind of entry, whatever their data.
    pub fn same_type(&self, other: &Kind) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Everything a layer records of one entry besides its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Type and type-specific data.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, to the nanosecond.
    pub mtime: Time,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Extended attributes that are never restored (as umoci ignores them): they
/// belong to the host's security policy, not to the image.
pub const IGNORED_XATTRS: [&[u8]; 2] = [b"security.selinux", b"system.nfs4_acl"];

/// Normalises a path from a tar header the way umoci does: `.` and empty
/// components dropped, `..` taken back lexically and never above the root,
/// no leading or trailing `/`. The root itself is the empty path.
pub fn clean_path(raw: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join(&b'/')
}

/// The parent directory and base name of a clean path.
pub fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

/// `dir/name` (or `name` at the root).
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    [dir, b"/", name].concat()
}

/// Whether clean path `path` is `dir` or lies below it.
pub fn is_within(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

/// A path from an image for messages: `/`-rooted, invalid UTF-8 and control
/// characters escaped, so a crafted name cannot forge or garble output.
pub fn show(path: &[u8]) -> String {
    format!("/{}", escaped(path))
}

/// A path on disk for messages, escaped as [`show`] escapes.
pub fn show_path(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    escaped(path.as_os_str().as_bytes())
}

fn escaped(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_as_umoci_cleans_them() {
        for (raw, want) in [
            ("./a/b/", "a/b"),
            ("/a", "a"),
            ("a", "a"),
            ("./", ""),
            (".", ""),
            ("a//b", "a/b"),
            ("a/../b", "b"),
            ("../../x/y", "x/y"),
            ("image/../../x/.wh.y", "x/.wh.y"),
            ("/..", ""),
        ] {
            assert_eq!(clean_path(raw.as_bytes()), want.as_bytes(), "{raw}");
        }
    }

    #[test]
    fn within_spares_siblings_with_a_common_prefix() {
        assert!(is_within(b"a/b", b"a"));
        assert!(is_within(b"a", b"a"));
        assert!(is_within(b"x", b""));
        assert!(!is_within(b"ab", b"a"));
        assert!(!is_within(b"a", b"a/b"));
    }

    #[test]
    fn shown_names_escape_control_characters() {
        assert_eq!(show(b"evil\x1b[31m\nname"), "/evil\\u{1b}[31m\\nname");
        assert_eq!(show(b"caf\xe9"), "/caf\\xe9");
        assert_eq!(show(b"usr/bin"), "/usr/bin");
    }
}
