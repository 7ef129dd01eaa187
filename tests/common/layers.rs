//! Craft image layers byte by byte, put them into OCI image layouts, and
//! snapshot unpacked trees to the nanosecond: the tools of the differential
//! corpus in `tests/layer_differential.rs`.
//!
//! The `tar` crate's Builder normalises what a layer from the wild does not
//! (odd names, unknown typeflags, malformed numbers, PAX global headers), so
//! headers are encoded here: ustar or GNU magic, PAX `x` and `g` records, GNU
//! `L`/`K` long names, raw field overrides.

use std::fs;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::tree::{self, Entry as TreeEntry, Kind, Snapshot};

const BLOCK: usize = 512;

/// Typeflags (POSIX and GNU).
pub mod flag {
    pub const FILE: u8 = b'0';
    /// The pre-POSIX regular file, which old archivers also used for
    /// directories (their names end in `/`).
    pub const OLD_FILE: u8 = 0;
    pub const HARD_LINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR: u8 = b'3';
    pub const BLOCK: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
    pub const CONTIGUOUS: u8 = b'7';
    pub const PAX: u8 = b'x';
    pub const PAX_GLOBAL: u8 = b'g';
    pub const GNU_LONG_NAME: u8 = b'L';
    pub const GNU_LONG_LINK: u8 = b'K';
    pub const GNU_VOLUME: u8 = b'V';
}

/// How an over-long name or link target is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongNames {
    /// Truncated to the 100-byte field (the PAX records carry the rest).
    Truncate,
    /// A GNU `L` (name) or `K` (link target) entry before the header.
    Gnu,
}

/// One tar entry, as its header and the records before it will say.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name, as bytes.
    pub name: Vec<u8>,
    /// The typeflag byte.
    pub typeflag: u8,
    /// Mode bits, setuid/setgid/sticky included.
    pub mode: u32,
    /// Owner ids.
    pub uid: u64,
    pub gid: u64,
    /// Seconds; `None` takes the layer's default time for this position.
    pub mtime: Option<u64>,
    /// Link target of a symlink or hard link.
    pub linkname: Vec<u8>,
    /// Device numbers of a node.
    pub dev: (u32, u32),
    /// Content of a file (or of a `g` header).
    pub data: Vec<u8>,
    /// PAX records written in an `x` header just before this entry.
    pub pax: Vec<(Vec<u8>, Vec<u8>)>,
    /// GNU magic (`ustar  `) instead of POSIX (`ustar\0` `00`).
    pub gnu: bool,
    /// How a name or link target over 100 bytes is written.
    pub long: LongNames,
    /// The size field, when it must differ from the data's length.
    pub size: Option<u64>,
    /// Bytes written over the header at an offset after everything else
    /// (the checksum included, if it is overwritten here).
    pub patches: Vec<(usize, Vec<u8>)>,
    /// Recompute the checksum after `patches` (false keeps a stale one).
    pub fix_checksum: bool,
}

impl Entry {
    fn new(name: impl AsRef<[u8]>, typeflag: u8, mode: u32) -> Entry {
        Entry {
            name: name.as_ref().to_vec(),
            typeflag,
            mode,
            uid: 0,
            gid: 0,
            mtime: None,
            linkname: Vec::new(),
            dev: (0, 0),
            data: Vec::new(),
            pax: Vec::new(),
            gnu: false,
            long: LongNames::Truncate,
            size: None,
            patches: Vec::new(),
            fix_checksum: true,
        }
    }

    /// Bytes written over the encoded header at `offset` (see [`field`]).
    pub fn patch(mut self, offset: usize, bytes: &[u8]) -> Entry {
        self.patches.push((offset, bytes.to_vec()));
        self
    }

    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, secs: u64) -> Entry {
        self.mtime = Some(secs);
        self
    }

    /// A PAX record of this entry's `x` header.
    pub fn pax(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Entry {
        self.pax.push((key.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    /// An extended attribute, as GNU tar and Go write it: `SCHILY.xattr.NAME`.
    pub fn xattr(self, name: &str, value: impl AsRef<[u8]>) -> Entry {
        self.pax(format!("SCHILY.xattr.{name}"), value)
    }

    /// Name and link target over 100 bytes in PAX `path`/`linkpath` records.
    pub fn pax_long(self) -> Entry {
        let (name, link) = (self.name.clone(), self.linkname.clone());
        let entry = self.pax("path", name);
        if link.is_empty() {
            entry
        } else {
            entry.pax("linkpath", link)
        }
    }

    /// Name and link target over 100 bytes in GNU `L`/`K` entries.
    pub fn gnu_long(mut self) -> Entry {
        self.long = LongNames::Gnu;
        self.gnu = true;
        self
    }

    pub fn gnu_magic(mut self) -> Entry {
        self.gnu = true;
        self
    }

    pub fn typeflag(mut self, typeflag: u8) -> Entry {
        self.typeflag = typeflag;
        self
    }

    pub fn size_field(mut self, size: u64) -> Entry {
        self.size = Some(size);
        self
    }

    /// Keep the checksum computed before `patches` were applied.
    pub fn stale_checksum(mut self) -> Entry {
        self.fix_checksum = false;
        self
    }
}

/// A regular file.
pub fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Entry {
    let mut entry = Entry::new(name, flag::FILE, 0o644);
    entry.data = data.as_ref().to_vec();
    entry
}

/// A directory (write the name with or without the trailing `/`).
pub fn dir(name: impl AsRef<[u8]>) -> Entry {
    Entry::new(name, flag::DIR, 0o755)
}

pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
    let mut entry = Entry::new(name, flag::SYMLINK, 0o777);
    entry.linkname = target.as_ref().to_vec();
    entry
}

pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
    let mut entry = Entry::new(name, flag::HARD_LINK, 0o644);
    entry.linkname = target.as_ref().to_vec();
    entry
}

pub fn chardev(name: impl AsRef<[u8]>, major: u32, minor: u32) -> Entry {
    let mut entry = Entry::new(name, flag::CHAR, 0o666);
    entry.dev = (major, minor);
    entry
}

pub fn blockdev(name: impl AsRef<[u8]>, major: u32, minor: u32) -> Entry {
    let mut entry = Entry::new(name, flag::BLOCK, 0o660);
    entry.dev = (major, minor);
    entry
}

pub fn fifo(name: impl AsRef<[u8]>) -> Entry {
    Entry::new(name, flag::FIFO, 0o644)
}

/// The whiteout `DIR/.wh.NAME` of `path` = `DIR/NAME`.
pub fn whiteout(path: &str) -> Entry {
    let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
    let name = if dir.is_empty() {
        format!(".wh.{name}")
    } else {
        format!("{dir}/.wh.{name}")
    };
    file(name, b"")
}

/// The opaque marker of directory `dir` (`""` for the root).
pub fn opaque(dir: &str) -> Entry {
    let name = if dir.is_empty() {
        ".wh..wh..opq".to_string()
    } else {
        format!("{dir}/.wh..wh..opq")
    };
    file(name, b"")
}

/// A PAX global header (`g`) with these records, named as git archive and
/// GNU tar name it.
pub fn global(records: &[(&str, &str)]) -> Entry {
    let mut entry = Entry::new("pax_global_header", flag::PAX_GLOBAL, 0o666);
    entry.data = records
        .iter()
        .flat_map(|(k, v)| pax_record(k.as_bytes(), v.as_bytes()))
        .collect();
    entry
}

/// Header field offsets and widths (ustar).
pub mod field {
    pub const NAME: (usize, usize) = (0, 100);
    pub const MODE: (usize, usize) = (100, 8);
    pub const UID: (usize, usize) = (108, 8);
    pub const GID: (usize, usize) = (116, 8);
    pub const SIZE: (usize, usize) = (124, 12);
    pub const MTIME: (usize, usize) = (136, 12);
    pub const CHECKSUM: (usize, usize) = (148, 8);
    pub const TYPEFLAG: (usize, usize) = (156, 1);
    pub const LINKNAME: (usize, usize) = (157, 100);
    pub const MAGIC: (usize, usize) = (257, 8);
    pub const DEVMAJOR: (usize, usize) = (329, 8);
    pub const DEVMINOR: (usize, usize) = (337, 8);
    pub const PREFIX: (usize, usize) = (345, 155);
}

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting the whole record.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    let mut record = format!("{len} ").into_bytes();
    record.extend_from_slice(key);
    record.push(b'=');
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// The whole tar stream of `entries`, with two zero blocks at the end.
/// Entries without an mtime get `default_mtime + 60 * position`.
pub fn tar(entries: &[Entry], default_mtime: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for (position, entry) in entries.iter().enumerate() {
        let mtime = entry.mtime.unwrap_or(default_mtime + 60 * position as u64);
        append(&mut out, entry, mtime);
    }
    out.extend_from_slice(&[0; 2 * BLOCK]);
    out
}

fn append(out: &mut Vec<u8>, entry: &Entry, mtime: u64) {
    if entry.long == LongNames::Gnu {
        if entry.linkname.len() > 100 {
            append_meta(
                out,
                b"././@LongLink",
                flag::GNU_LONG_LINK,
                &nul_terminated(&entry.linkname),
            );
        }
        if entry.name.len() > 100 {
            append_meta(out, b"././@LongLink", flag::GNU_LONG_NAME, &nul_terminated(&entry.name));
        }
    }
    if !entry.pax.is_empty() {
        let records: Vec<u8> = entry.pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let mut name = b"PaxHeaders.0/".to_vec();
        name.extend_from_slice(
            entry
                .name
                .rsplit(|&b| b == b'/')
                .find(|c| !c.is_empty())
                .unwrap_or(b"root"),
        );
        append_meta(out, &name, flag::PAX, &records);
    }
    let mut header = [0u8; BLOCK];
    put(&mut header, field::NAME, &entry.name);
    octal(&mut header, field::MODE, u64::from(entry.mode));
    octal(&mut header, field::UID, entry.uid);
    octal(&mut header, field::GID, entry.gid);
    octal(&mut header, field::SIZE, entry.size.unwrap_or(entry.data.len() as u64));
    octal(&mut header, field::MTIME, mtime);
    header[field::TYPEFLAG.0] = entry.typeflag;
    put(&mut header, field::LINKNAME, &entry.linkname);
    put(
        &mut header,
        field::MAGIC,
        if entry.gnu { b"ustar  \0" } else { b"ustar\x0000" },
    );
    if matches!(entry.typeflag, flag::CHAR | flag::BLOCK) || entry.dev != (0, 0) {
        octal(&mut header, field::DEVMAJOR, u64::from(entry.dev.0));
        octal(&mut header, field::DEVMINOR, u64::from(entry.dev.1));
    }
    checksum(&mut header);
    for (offset, bytes) in &entry.patches {
        header[*offset..*offset + bytes.len()].copy_from_slice(bytes);
    }
    if entry.fix_checksum && !entry.patches.is_empty() {
        checksum(&mut header);
    }
    out.extend_from_slice(&header);
    pad_data(out, &entry.data);
}

/// A header of type `typeflag` whose content is `data` (PAX or GNU meta).
fn append_meta(out: &mut Vec<u8>, name: &[u8], typeflag: u8, data: &[u8]) {
    let mut header = [0u8; BLOCK];
    put(&mut header, field::NAME, name);
    octal(&mut header, field::MODE, 0o644);
    octal(&mut header, field::UID, 0);
    octal(&mut header, field::GID, 0);
    octal(&mut header, field::SIZE, data.len() as u64);
    octal(&mut header, field::MTIME, 0);
    header[field::TYPEFLAG.0] = typeflag;
    let gnu = matches!(typeflag, flag::GNU_LONG_NAME | flag::GNU_LONG_LINK);
    put(
        &mut header,
        field::MAGIC,
        if gnu { b"ustar  \0" } else { b"ustar\x0000" },
    );
    checksum(&mut header);
    out.extend_from_slice(&header);
    pad_data(out, data);
}

fn pad_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let rest = data.len() % BLOCK;
    if rest != 0 {
        out.extend(std::iter::repeat_n(0u8, BLOCK - rest));
    }
}

fn nul_terminated(bytes: &[u8]) -> Vec<u8> {
    let mut data = bytes.to_vec();
    data.push(0);
    data
}

/// Copies `bytes` into the field, truncated to its width.
fn put(header: &mut [u8; BLOCK], (offset, width): (usize, usize), bytes: &[u8]) {
    let n = bytes.len().min(width);
    header[offset..offset + n].copy_from_slice(&bytes[..n]);
}

/// Zero-padded octal digits and a NUL; GNU base-256 when it does not fit.
fn octal(header: &mut [u8; BLOCK], (offset, width): (usize, usize), value: u64) {
    let digits = format!("{value:0w$o}", w = width - 1);
    if digits.len() < width {
        header[offset..offset + width - 1].copy_from_slice(digits.as_bytes());
        header[offset + width - 1] = 0;
    } else {
        header[offset..offset + width].copy_from_slice(&base256(value, width));
    }
}

/// GNU's base-256 number: a first byte with the high bit set, then the
/// value big endian.
pub fn base256(value: u64, width: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; width];
    let mut rest = value;
    for byte in bytes.iter_mut().skip(1).rev() {
        *byte = rest as u8;
        rest >>= 8;
    }
    bytes[0] = 0x80;
    bytes
}

fn checksum(header: &mut [u8; BLOCK]) {
    let (offset, width) = field::CHECKSUM;
    header[offset..offset + width].fill(b' ');
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    header[offset..offset + width].copy_from_slice(text.as_bytes());
}

/// How a layer blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `tar+gzip`.
    Gzip,
    /// `tar`, uncompressed.
    Plain,
    /// `tar+zstd`, one frame.
    Zstd,
    /// `tar+zstd`, two frames one after the other.
    ZstdFrames,
    /// `tar+zstd` as zstd:chunked writes it: several frames, with skippable
    /// frames first, between and after them.
    ZstdSkippable,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Plain => "application/vnd.oci.image.layer.v1.tar",
            Compression::Zstd | Compression::ZstdFrames | Compression::ZstdSkippable => {
                "application/vnd.oci.image.layer.v1.tar+zstd"
            }
        }
    }

    /// The blob of `tar` in this compression.
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(tar).unwrap();
                gz.finish().unwrap()
            }
            Compression::Plain => tar.to_vec(),
            Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
            Compression::ZstdFrames => {
                let cut = split_point(tar);
                let mut blob = zstd::encode_all(&tar[..cut], 3).unwrap();
                blob.extend(zstd::encode_all(&tar[cut..], 3).unwrap());
                blob
            }
            Compression::ZstdSkippable => {
                let cut = split_point(tar);
                let mut blob = skippable_frame(0x184D_2A50, b"zstd:chunked manifest goes here");
                blob.extend(zstd::encode_all(&tar[..cut], 3).unwrap());
                blob.extend(skippable_frame(0x184D_2A5E, &[0xAB; 40]));
                blob.extend(zstd::encode_all(&tar[cut..], 3).unwrap());
                blob.extend(skippable_frame(0x184D_2A5F, b""));
                blob
            }
        }
    }
}

/// Where a tar is cut into two zstd frames: not on a block boundary, so
/// that no reader can rely on frames ending with entries.
fn split_point(tar: &[u8]) -> usize {
    (tar.len() / 2 + 100).min(tar.len())
}

/// A zstd skippable frame: magic (0x184D2A50..=0x184D2A5F) and size, both
/// u32 little endian, then the payload.
pub fn skippable_frame(magic: u32, payload: &[u8]) -> Vec<u8> {
    assert!((0x184D_2A50..=0x184D_2A5F).contains(&magic));
    let mut frame = magic.to_le_bytes().to_vec();
    frame.extend((payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// One layer blob for [`write_image`]: the blob, its media type, and the
/// digest of its uncompressed tar.
pub struct Blob {
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: String,
}

impl Blob {
    pub fn new(tar: &[u8], compression: Compression) -> Blob {
        Blob {
            bytes: compression.compress(tar),
            media_type: compression.media_type(),
            diff_id: digest(tar),
        }
    }
}

/// Adds the image `layers` to the OCI layout `layout` (created if missing)
/// under the ref name `name`: blobs, config, manifest, and its index entry.
pub fn write_image(layout: &Path, name: &str, layers: &[Blob]) {
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |bytes: &[u8], media_type: &str| {
        let digest = digest(bytes);
        fs::write(blobs.join(&digest["sha256:".len()..]), bytes).unwrap();
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    };
    let descriptors: Vec<_> = layers.iter().map(|l| put(&l.bytes, l.media_type)).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
    });
    let config = put(
        &serde_json::to_vec(&config).unwrap(),
        "application/vnd.oci.image.config.v1+json",
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": descriptors,
    });
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let mut manifest = put(&serde_json::to_vec(&manifest).unwrap(), manifest_type);
    manifest["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    let index_path = layout.join("index.json");
    let mut index = match fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(_) => json!({"schemaVersion": 2, "manifests": []}),
    };
    index["manifests"].as_array_mut().unwrap().push(manifest);
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Nanoseconds since the epoch, as one number.
pub type Nanos = i128;

/// A tree to the nanosecond: [`tree::snapshot`] with `mtime` holding
/// nanoseconds, plus the root directory itself under the key `"."`.
pub fn snapshot_ns(root: &Path) -> Snapshot {
    let mut snap = tree::snapshot(root);
    for (path, entry) in snap.iter_mut() {
        let meta = fs::symlink_metadata(root.join(std::ffi::OsStr::from_bytes(path))).unwrap();
        entry.mtime = nanos(&meta) as i64;
    }
    let meta = fs::symlink_metadata(root).unwrap();
    let xattrs = xattr::list(root)
        .unwrap()
        .filter_map(|name| Some((name.as_bytes().to_vec(), xattr::get(root, &name).ok()??)))
        .collect();
    let root_entry = TreeEntry {
        kind: Kind::Dir,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: nanos(&meta) as i64,
        mtime_nsec: 0,
        xattrs,
        link_group: None,
    };
    snap.insert(b".".to_vec(), root_entry);
    snap
}

fn nanos(meta: &fs::Metadata) -> Nanos {
    Nanos::from(meta.mtime()) * 1_000_000_000 + Nanos::from(meta.mtime_nsec())
}

/// Seconds and nanoseconds, for messages: `1600000000.123456789`.
pub fn show_nanos(ns: i64) -> String {
    format!("{}.{:09}", ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

/// umoci's `CleanPath`: lexically clean, relative to the root, no `..`
/// above it (`a/../b` is `b`, `../x` is `x`, `./` is `.`).
pub fn umoci_clean(name: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        b".".to_vec()
    } else {
        parts.join(&b'/')
    }
}
