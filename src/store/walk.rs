//! What one ref of the store needs, read from its blobs' JSON without
//! knowing their media types: every descriptor under `config`, `layers`,
//! `manifests`, `subject` and `blobs`, with nested manifests and indexes
//! followed. OCI and Docker manifests, manifest lists and OCI indexes all
//! keep what they need, and whatever is wrong on the way is named.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use serde_json::Value;

use crate::oci::{self, Descriptor, DescriptorExt, Digest, MediaType};

/// Media type of a Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The largest manifest, index or config read (registries take manifests
/// of at most 4 MiB).
const MAX_JSON: u64 = 16 << 20;

/// What an index entry is, by its media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An OCI image manifest: what `stash` writes.
    OciImage,
    /// A Docker schema 2 image manifest.
    DockerImage,
    /// An OCI image index.
    OciIndex,
    /// A Docker manifest list.
    DockerList,
    /// Any other media type, kept as it is spelled.
    Other(String),
}

impl Kind {
    /// The kind of an entry of media type `media_type`.
    pub fn of(media_type: &MediaType) -> Kind {
        match media_type {
            MediaType::ImageManifest => Kind::OciImage,
            MediaType::ImageIndex => Kind::OciIndex,
            MediaType::Other(s) if s == DOCKER_MANIFEST => Kind::DockerImage,
            MediaType::Other(s) if s == DOCKER_LIST => Kind::DockerList,
            other => Kind::Other(other.to_string()),
        }
    }

    /// Whether it is an image manifest (config and layers).
    pub fn is_image(&self) -> bool {
        matches!(self, Kind::OciImage | Kind::DockerImage)
    }

    /// Whether it lists other manifests.
    pub fn is_list(&self) -> bool {
        matches!(self, Kind::OciIndex | Kind::DockerList)
    }
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::OciImage => f.write_str("oci image"),
            Kind::DockerImage => f.write_str("docker image"),
            Kind::OciIndex => f.write_str("oci index"),
            Kind::DockerList => f.write_str("docker manifest list"),
            Kind::Other(media_type) => f.write_str(media_type),
        }
    }
}

/// The part a blob plays for the ref that needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An image manifest (or an entry of unknown media type).
    Manifest,
    /// An index or manifest list.
    Index,
    /// An image config.
    Config,
    /// A layer.
    Layer,
    /// A blob of an artifact manifest.
    Blob,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manifest => "manifest",
            Role::Index => "index",
            Role::Config => "config",
            Role::Layer => "layer",
            Role::Blob => "blob",
        })
    }
}

/// What is wrong with a blob a ref needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// No such file in `blobs/sha256`.
    Missing,
    /// The file's size is not the size its descriptor records.
    WrongSize {
        /// The file's size.
        found: u64,
        /// The descriptor's size.
        recorded: u64,
    },
    /// The content does not match the digest.
    Corrupt,
    /// The content is not the JSON its role needs.
    Unparseable(String),
    /// The file is there but could not be read.
    Unreadable(String),
    /// The descriptor's digest is not a sha256 digest we can look up.
    UnsupportedDigest,
}

/// One problem of a ref: which blob, in what role, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The part the blob plays.
    pub role: Role,
    /// The digest as the descriptor spells it.
    pub digest: String,
    /// What is wrong.
    pub fault: Fault,
}

impl Problem {
    /// Whether the ref may need blobs nobody can name: its manifest or
    /// index is there but cannot be read, so garbage collection must not
    /// run. A missing manifest reaches nothing that can be found, so it
    /// blocks nothing.
    pub fn blocks_gc(&self) -> bool {
        matches!(self.role, Role::Manifest | Role::Index)
            && !matches!(self.fault, Fault::Missing | Fault::UnsupportedDigest)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Problem { role, digest, fault } = self;
        match fault {
            Fault::Missing => write!(f, "{role} {digest} missing"),
            Fault::WrongSize { found, recorded } => {
                write!(f, "{role} {digest} is {found} bytes, {recorded} recorded")
            }
            Fault::Corrupt => write!(f, "{role} {digest} corrupt: its content does not match its digest"),
            Fault::Unparseable(e) => write!(f, "{role} {digest} cannot be parsed: {e}"),
            Fault::Unreadable(e) => write!(f, "{role} {digest} cannot be read: {e}"),
            Fault::UnsupportedDigest => write!(f, "{role} {digest} has an unsupported digest (only sha256 is)"),
        }
    }
}

/// A blob a ref needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// Its digest.
    pub digest: Digest,
    /// The size its descriptor records, when it records one.
    pub size: Option<u64>,
    /// The part it plays.
    pub role: Role,
}

/// Everything one ref reaches.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    /// Every blob it needs, its manifest first; missing ones too.
    pub needs: Vec<Need>,
    /// What is wrong with them.
    pub problems: Vec<Problem>,
    /// Chain IDs of its images whose config could be read, for the tree cache.
    pub chains: Vec<Digest>,
}

impl Reach {
    /// The problem that keeps garbage collection from running, if any.
    pub fn blocker(&self) -> Option<&Problem> {
        self.problems.iter().find(|p| p.blocks_gc())
    }
}

/// What the index entry `d` reaches in the layout at `layout`. Manifests,
/// indexes and configs are read and verified (they are small); layers and
/// other blobs are only looked up, with their size.
pub fn reach(layout: &Path, d: &Descriptor) -> Reach {
    let mut walk = Walk {
        layout,
        reach: Reach::default(),
        seen: HashSet::new(),
    };
    let role = if Kind::of(d.media_type()).is_list() {
        Role::Index
    } else {
        Role::Manifest
    };
    match d.sha256() {
        Ok(digest) => walk.json(&digest, Some(d.size()), role),
        Err(_) => walk.problem(role, d.digest(), Fault::UnsupportedDigest),
    }
    walk.reach
}

struct Walk<'a> {
    layout: &'a Path,
    reach: Reach,
    seen: HashSet<Digest>,
}

/// The members of a manifest or index that hold descriptors, and the part
/// the blobs they name play (nested manifests are told by media type).
const MEMBERS: [(&str, Role); 5] = [
    ("config", Role::Config),
    ("layers", Role::Layer),
    ("manifests", Role::Manifest),
    ("subject", Role::Manifest),
    ("blobs", Role::Blob),
];

impl Walk<'_> {
    /// Notes that the blob `digest` (as its descriptor spells it) plays
    /// `role` and has `fault`.
    fn problem(&mut self, role: Role, digest: impl fmt::Display, fault: Fault) {
        self.reach.problems.push(Problem {
            role,
            digest: digest.to_string(),
            fault,
        });
    }

    /// Reads and verifies a blob; `None` (with the problem noted) when it
    /// is missing, unreadable, of the wrong size or corrupt.
    fn read(&mut self, digest: &Digest, size: Option<u64>, role: Role) -> Option<Vec<u8>> {
        let path = oci::blob_path(self.layout, digest);
        // The size first: a wrong or huge file is not read at all, nor
        // anything but a regular file (a FIFO or a link to /dev/zero would
        // never end).
        let read = fs::symlink_metadata(&path).and_then(|m| {
            if !m.is_file() {
                return Ok(Err(Fault::Unreadable("it is not a regular file".into())));
            }
            let found = m.len();
            if let Some(recorded) = size.filter(|s| *s != found) {
                return Ok(Err(Fault::WrongSize { found, recorded }));
            }
            if found > MAX_JSON {
                return Ok(Err(Fault::Unparseable(format!(
                    "{found} bytes, too large for JSON metadata"
                ))));
            }
            fs::read(&path).map(Ok)
        });
        let bytes = match read {
            Ok(Ok(b)) => b,
            Ok(Err(fault)) => {
                self.problem(role, digest, fault);
                return None;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.problem(role, digest, Fault::Missing);
                return None;
            }
            Err(e) => {
                self.problem(role, digest, Fault::Unreadable(e.to_string()));
                return None;
            }
        };
        if Digest::of(&bytes) != *digest {
            self.problem(role, digest, Fault::Corrupt);
            return None;
        }
        Some(bytes)
    }

    /// A manifest or index: read, parsed as any JSON, and its descriptors followed.
    fn json(&mut self, digest: &Digest, size: Option<u64>, role: Role) {
        self.reach.needs.push(Need {
            digest: digest.clone(),
            size,
            role,
        });
        if !self.seen.insert(digest.clone()) {
            return;
        }
        let Some(bytes) = self.read(digest, size, role) else {
            return;
        };
        let value = match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.is_object() => v,
            Ok(_) => return self.problem(role, digest, Fault::Unparseable("not a JSON object".into())),
            Err(e) => return self.problem(role, digest, Fault::Unparseable(e.to_string())),
        };
        for (member, member_role) in MEMBERS {
            let items = match value.get(member) {
                Some(Value::Array(items)) => items.iter().collect(),
                Some(item @ Value::Object(_)) => vec![item],
                _ => Vec::new(),
            };
            for item in items {
                self.descriptor(item, member_role, member == "subject");
            }
        }
        // A Docker schema 1 manifest names its layers `fsLayers[].blobSum`.
        let schema1 = value.get("fsLayers").and_then(Value::as_array);
        for layer in schema1.into_iter().flatten() {
            if let Some(sum) = layer.get("blobSum").and_then(Value::as_str) {
                match Digest::try_from(sum.to_string()) {
                    Ok(digest) => self.leaf(&digest, None, Role::Layer),
                    Err(_) => self.problem(Role::Layer, sum, Fault::UnsupportedDigest),
                }
            }
        }
        // JSON of no shape we know may name blobs anywhere: what it needs
        // cannot be told, so nothing may count as unused.
        let known = MEMBERS.iter().any(|(m, _)| value.get(m).is_some()) || schema1.is_some();
        if !known {
            let media_type = value.get("mediaType").and_then(Value::as_str).unwrap_or("none given");
            self.problem(
                role,
                digest,
                Fault::Unparseable(format!(
                    "no manifest or index we know (media type {media_type}), so which blobs it needs cannot be told"
                )),
            );
        }
    }

    /// One descriptor of a manifest or index; an `optional` one (a
    /// referrer's subject, which may live elsewhere) is followed only when
    /// the store has it.
    fn descriptor(&mut self, item: &Value, role: Role, optional: bool) {
        let Some(spelled) = item.get("digest").and_then(Value::as_str) else {
            return;
        };
        let size = item.get("size").and_then(Value::as_u64);
        let Ok(digest) = Digest::try_from(spelled.to_string()) else {
            return self.problem(role, spelled, Fault::UnsupportedDigest);
        };
        if optional && !oci::blob_path(self.layout, &digest).exists() {
            return;
        }
        let kind = item
            .get("mediaType")
            .and_then(Value::as_str)
            .map(|m| Kind::of(&MediaType::from(m)));
        match kind {
            Some(k) if k.is_list() => self.json(&digest, size, Role::Index),
            Some(k) if k.is_image() => self.json(&digest, size, Role::Manifest),
            _ if role == Role::Manifest => self.json(&digest, size, Role::Manifest),
            _ if role == Role::Config => self.config(&digest, size),
            _ => self.leaf(&digest, size, role),
        }
    }

    /// An image config: read and verified; its diff_ids name the tree cache entry.
    fn config(&mut self, digest: &Digest, size: Option<u64>) {
        self.reach.needs.push(Need {
            digest: digest.clone(),
            size,
            role: Role::Config,
        });
        let Some(bytes) = self.read(digest, size, Role::Config) else {
            return;
        };
        let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
            return;
        };
        let ids: Option<Vec<Digest>> = value.pointer("/rootfs/diff_ids").and_then(Value::as_array).map(|ids| {
            ids.iter()
                .filter_map(|id| Digest::try_from(id.as_str()?.to_string()).ok())
                .collect()
        });
        if let Some(chain) = ids.and_then(|ids| crate::layer::cache::chain_id(&ids)) {
            self.reach.chains.push(chain);
        }
    }

    /// A layer or other blob: only looked up, with its size (cheap).
    fn leaf(&mut self, digest: &Digest, size: Option<u64>, role: Role) {
        self.reach.needs.push(Need {
            digest: digest.clone(),
            size,
            role,
        });
        match fs::symlink_metadata(oci::blob_path(self.layout, digest)) {
            Ok(m) if !m.is_file() => self.problem(role, digest, Fault::Unreadable("it is not a regular file".into())),
            Ok(m) => {
                if let Some(recorded) = size.filter(|s| *s != m.len()) {
                    self.problem(
                        role,
                        digest,
                        Fault::WrongSize {
                            found: m.len(),
                            recorded,
                        },
                    );
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => self.problem(role, digest, Fault::Missing),
            Err(e) => self.problem(role, digest, Fault::Unreadable(e.to_string())),
        }
    }
}
