//! Images written byte by byte, for tests that feed the binary hostile
//! input: tar layers from raw ustar headers (the tar crate refuses to write
//! `..` in a name, and checks what a crafted layer must be free to get
//! wrong), and OCI image layouts whose descriptors may lie about a blob.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

/// The mtime of every crafted entry (2020-09-13).
const MTIME: u64 = 1_600_000_000;
/// The annotation that names a ref in an OCI index.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An uncompressed tar stream built entry by entry.
#[derive(Default)]
pub struct Tar {
    bytes: Vec<u8>,
}

/// What a tar entry is, as its header's typeflag says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// `0`: a regular file.
    File,
    /// `1`: a hard link to an earlier entry.
    HardLink,
    /// `2`: a symbolic link.
    Symlink,
    /// `3`: a character device.
    Char,
    /// `5`: a directory.
    Dir,
    /// `6`: a named pipe.
    Fifo,
}

impl Type {
    fn flag(self) -> u8 {
        match self {
            Type::File => b'0',
            Type::HardLink => b'1',
            Type::Symlink => b'2',
            Type::Char => b'3',
            Type::Dir => b'5',
            Type::Fifo => b'6',
        }
    }
}

/// One entry: everything a header can say, with root-owned defaults.
pub struct Entry<'a> {
    /// The name, as raw bytes (nothing is cleaned or checked).
    pub path: &'a [u8],
    /// The type.
    pub kind: Type,
    /// Permission bits, setuid and setgid included.
    pub mode: u32,
    /// Owner and group.
    pub owner: (u32, u32),
    /// Link target of a symlink or hard link.
    pub link: &'a [u8],
    /// Content of a regular file.
    pub data: &'a [u8],
    /// Major and minor of a device node.
    pub device: (u32, u32),
}

impl<'a> Entry<'a> {
    /// A root-owned entry of `kind` at `path`, mode 0644, empty.
    pub fn new(path: &'a [u8], kind: Type) -> Entry<'a> {
        Entry {
            path,
            kind,
            mode: 0o644,
            owner: (0, 0),
            link: b"",
            data: b"",
            device: (0, 0),
        }
    }
}

impl Tar {
    /// An empty stream.
    pub fn new() -> Tar {
        Tar::default()
    }

    /// Appends `e`, with a PAX header first when its name or link target
    /// does not fit the ustar fields.
    pub fn entry(&mut self, e: &Entry) {
        if e.path.len() > 100 || e.link.len() > 100 {
            let mut records = pax_record("path", e.path);
            if !e.link.is_empty() {
                records.extend(pax_record("linkpath", e.link));
            }
            let mut pax = Entry::new(b"././@PaxHeader", Type::File);
            pax.data = &records;
            self.push(&pax, b'x');
        }
        self.push(e, e.kind.flag());
    }

    fn push(&mut self, e: &Entry, flag: u8) {
        let mut h = [0u8; 512];
        put(&mut h[0..100], e.path);
        octal(&mut h[100..108], u64::from(e.mode));
        octal(&mut h[108..116], u64::from(e.owner.0));
        octal(&mut h[116..124], u64::from(e.owner.1));
        octal(&mut h[124..136], e.data.len() as u64);
        octal(&mut h[136..148], MTIME);
        h[156] = flag;
        put(&mut h[157..257], e.link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        octal(&mut h[329..337], u64::from(e.device.0));
        octal(&mut h[337..345], u64::from(e.device.1));
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.bytes.extend_from_slice(&h);
        self.bytes.extend_from_slice(e.data);
        let pad = (512 - e.data.len() % 512) % 512;
        self.bytes.resize(self.bytes.len() + pad, 0);
    }

    /// A root-owned directory, mode 0755.
    pub fn dir(&mut self, path: &str) {
        self.entry(&Entry {
            mode: 0o755,
            ..Entry::new(path.as_bytes(), Type::Dir)
        });
    }

    /// A root-owned file, mode 0644.
    pub fn file(&mut self, path: &str, data: &[u8]) {
        self.entry(&Entry {
            data,
            ..Entry::new(path.as_bytes(), Type::File)
        });
    }

    /// A symbolic link `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(&Entry {
            mode: 0o777,
            link: target.as_bytes(),
            ..Entry::new(path.as_bytes(), Type::Symlink)
        });
    }

    /// The stream with its end marker (two zero blocks).
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.resize(self.bytes.len() + 1024, 0);
        self.bytes
    }
}

/// `value` into a NUL-padded header field, cut to its length.
fn put(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// `value` as zero-padded octal and a NUL, filling the field.
fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(text.as_bytes());
}

/// One PAX record, `LEN KEY=VALUE\n`, LEN counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// `sha256:HEX` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// `bytes` gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A layer as an image describes it. The blob is stored under `digest`,
/// whatever its content; `size` and `diff_id` are what the descriptor and
/// the config claim. [`Layer::gzip`] makes them all true.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The bytes of the blob file.
    pub blob: Vec<u8>,
    /// The digest in the manifest, and the blob's file name.
    pub digest: String,
    /// The size in the manifest.
    pub size: u64,
    /// The diff_id in the config.
    pub diff_id: String,
}

impl Layer {
    /// The gzip layer of `tar`, described truthfully.
    pub fn gzip(tar: &[u8]) -> Layer {
        let blob = gzip(tar);
        Layer {
            digest: sha256(&blob),
            size: blob.len() as u64,
            diff_id: sha256(tar),
            blob,
        }
    }
}

/// Writes an OCI image layout at `dir` with one image, `name`, made of
/// `layers`, and returns its reference `oci:DIR:NAME`.
pub fn write_image(dir: &Path, name: &str, layers: &[Layer]) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put_blob = |digest: &str, bytes: &[u8]| {
        fs::write(blobs.join(digest.strip_prefix("sha256:").unwrap()), bytes).unwrap();
    };
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for l in layers {
        put_blob(&l.digest, &l.blob);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
    }))
    .unwrap();
    let config_digest = sha256(&config);
    put_blob(&config_digest, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": l.digest,
            "size": l.size,
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let manifest_digest = sha256(&manifest);
    put_blob(&manifest_digest, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { REF_NAME: name },
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    format!("oci:{}:{name}", dir.display())
}
