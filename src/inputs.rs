//! The input record of a build: a canonical account of everything that
//! decides the root tree a build prepares (the description and every file
//! beside it, the profiles, type and architecture, the arguments after `--`
//! that change the root, kiwi-ng's version, our layer format, the state of
//! every repository, the base images), and its sha256.
//!
//! The record is JSON with sorted keys (serde_json's ordered map). Its
//! `parts` are named so that two records can say what differs:
//! `config.sh`, `root/etc/motd`, `repository bookworm`, `kiwi-ng`,
//! `profiles`, `args`, `base images`. Only `parts` goes into the hash; the
//! arguments that do not change the root (`--target-dir`, ...) are kept
//! beside them in `not deciding`, and whatever could not be read (a
//! repository that did not answer, a base image known only by its
//! reference) in `not reusable`, each with its reason.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use color_eyre::eyre::{eyre, Result, WrapErr};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use crate::description::{self, Document};
use crate::labels;
use crate::oci::{DescriptorExt, Digest};
use crate::reference::ImageReference;
use crate::registry::RegistryAuth;
use crate::store::Store;
use crate::tools::kiwi::Globals;
use crate::tools::{self, Output, Tool};
use crate::transfer;

/// The version of the layer format we write (tar layers with PAX records for
/// nanosecond times and xattrs, the root directory included): a root stored
/// by another format is another input.
pub const LAYER_FORMAT: u32 = 1;

/// The version of the record's own shape.
pub const RECORD_FORMAT: u32 = 1;

/// How long one repository's metadata may take to come, in seconds.
const FETCH_TIMEOUT: &str = "30";

/// kiwi-ng `system build` options that change the root, and whether each
/// takes a value. Every other option (`--target-dir`, `--allow-existing-root`,
/// `--clear-cache`, `--signing-key`, `--set-container-tag`,
/// `--add-container-label`)
/// is recorded as not deciding.
const DECIDING: &[&str] = &[
    "--add-bootstrap-package",
    "--add-package",
    "--add-repo",
    "--add-repo-credentials",
    "--ca-cert",
    "--ca-target-distribution",
    "--delete-package",
    "--ignore-repos",
    "--ignore-repos-used-for-build",
    "--set-release-version",
    "--set-repo",
    "--set-repo-credentials",
    // The image a container type derives from is imported into the root.
    "--set-container-derived-from",
    "--set-type-attr",
];

/// The options of kiwi-ng 11's `system build` that take no value; every
/// other one takes one.
const NO_VALUE: &[&str] = &[
    "--allow-existing-root",
    "--clear-cache",
    "--ignore-repos",
    "--ignore-repos-used-for-build",
];

/// What a record is made of.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The description's directory (the merged one for a derived build);
    /// none when the build reads the description stored in its root (W2).
    pub dir: Option<&'a Path>,
    /// kiwi-ng's global options (profiles, type, architecture).
    pub globals: Option<&'a Globals>,
    /// The arguments after `--`, as kiwi-ng gets them.
    pub args: &'a [OsString],
    /// The images built on, lowest first: `ref@digest` when resolved.
    pub bases: Vec<Base>,
    /// The installed kiwi-ng's version; none when it cannot be read.
    pub kiwi_version: Option<String>,
}

/// A base image as the record names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// Resolved to its manifest digest.
    Resolved { reference: String, digest: String },
    /// Known only by its reference (its source could not be asked).
    ByReference(String),
}

impl Base {
    /// `reference` at the manifest `digest` (a stash as `NAME:TAG`).
    pub fn resolved(reference: &ImageReference, digest: &str) -> Base {
        let reference = match reference {
            ImageReference::Stash(r) => r.key(),
            other => other.to_string(),
        };
        Base::Resolved {
            reference,
            digest: digest.to_string(),
        }
    }
}

/// The record of a build of the description in `dir` (none: the one
/// stored in the root) with kiwi-ng's `globals`, the arguments after `--`
/// (`--target-dir` and `--description` left out), on `bases`, with the
/// installed kiwi-ng's version.
pub fn of_build(dir: Option<&Path>, globals: &Globals, args: &[OsString], bases: Vec<Base>) -> Result<Record> {
    let kiwi_version = Tool::KiwiNg
        .locate()
        .ok()
        .and_then(|_| crate::tools::kiwi::version().ok());
    Record::compute(&Request {
        dir,
        globals: Some(globals),
        args,
        bases,
        kiwi_version,
    })
}

/// The record and its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `sha256:...` of the canonical JSON of `parts`.
    pub hash: String,
    /// Every part that decides the root, by name.
    pub parts: BTreeMap<String, Value>,
    /// What was given but does not decide the root.
    pub not_deciding: Vec<String>,
    /// Why the record cannot vouch for the root (empty: it can).
    pub not_reusable: Vec<String>,
}

impl Record {
    /// Computes the record of `request`.
    pub fn compute(request: &Request) -> Result<Record> {
        let mut parts = BTreeMap::new();
        let mut not_reusable = Vec::new();
        let mut doc = None;
        if let Some(dir) = request.dir {
            let file = description::find(dir)?;
            let name = file.file_name().map(|n| escape(n.as_bytes())).unwrap_or_default();
            parts.insert("description".to_string(), json!(name));
            for (name, entry) in files_of(dir)? {
                parts.insert(name, entry);
            }
            doc = Some(Document::parse_file(&file)?);
        }
        let (deciding, not_deciding) = split_args(request.args);
        let globals = request.globals.cloned().unwrap_or_default();
        parts.insert("profiles".into(), json!(globals.profiles));
        parts.insert("image type".into(), json!(globals.image_type));
        let arch = globals
            .target_arch
            .clone()
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        parts.insert("architecture".into(), json!(arch));
        parts.insert("args".into(), json!(deciding));
        match &request.kiwi_version {
            Some(v) => parts.insert("kiwi-ng".into(), json!(v)),
            None => {
                not_reusable.push("kiwi-ng: its version cannot be read".into());
                parts.insert("kiwi-ng".into(), Value::Null)
            }
        };
        parts.insert("layer format".into(), json!(LAYER_FORMAT));
        let bases: Vec<String> = request
            .bases
            .iter()
            .map(|b| match b {
                Base::Resolved { reference, digest } => format!("{reference}@{digest}"),
                Base::ByReference(r) => {
                    not_reusable.push(format!("base image {r}: by reference, not resolved"));
                    format!("{r} (by reference, not resolved)")
                }
            })
            .collect();
        parts.insert("base images".into(), json!(bases));
        for repo in repositories(doc.as_ref(), &globals.profiles, &deciding) {
            let (name, value, problem) = repo.state();
            if let Some(p) = problem {
                log::warn!("{name}: {p}; the record is not reusable");
                not_reusable.push(format!("{name}: {p}"));
            }
            let mut name = name;
            let mut n = 2;
            while parts.contains_key(&name) {
                name = format!("{} ({n})", repo.name());
                n += 1;
            }
            parts.insert(name, value);
        }
        Ok(Record::from_parts(parts, not_deciding, not_reusable))
    }

    /// The record of `parts`, its hash computed.
    pub fn from_parts(parts: BTreeMap<String, Value>, not_deciding: Vec<String>, not_reusable: Vec<String>) -> Record {
        let canonical = serde_json::to_vec(&parts).expect("JSON values serialise");
        let hash = format!("sha256:{:x}", Sha256::digest(&canonical));
        Record {
            hash,
            parts,
            not_deciding,
            not_reusable,
        }
    }

    /// True when nothing kept it from recording every input.
    pub fn reusable(&self) -> bool {
        self.not_reusable.is_empty()
    }

    /// The record as JSON, keys sorted.
    pub fn to_json(&self) -> Value {
        json!({
            "format": RECORD_FORMAT,
            "hash": self.hash,
            "parts": self.parts,
            "not deciding": self.not_deciding,
            "not reusable": self.not_reusable,
            "reusable": self.reusable(),
        })
    }

    /// The record as one line of canonical JSON (for a label).
    pub fn to_canonical(&self) -> String {
        serde_json::to_string(&self.to_json()).expect("JSON values serialise")
    }

    /// Reads a record [`to_json`](Record::to_json) wrote; its hash is
    /// computed again from its parts, so a label that was edited is caught.
    pub fn from_json(text: &str) -> Result<Record> {
        let v: Value = serde_json::from_str(text).wrap_err("the input record is no JSON")?;
        let parts: BTreeMap<String, Value> =
            serde_json::from_value(v["parts"].clone()).map_err(|_| eyre!("the input record has no parts"))?;
        let strings = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let record = Record::from_parts(parts, strings("not deciding"), strings("not reusable"));
        if v["hash"].as_str() != Some(record.hash.as_str()) {
            return Err(eyre!(
                "the input record says its hash is {}, its parts hash to {}",
                v["hash"],
                record.hash
            ));
        }
        Ok(record)
    }

    /// The labels that carry the record on an image: the hash and the record.
    pub fn labels(&self) -> (String, String) {
        (self.hash.clone(), self.to_canonical())
    }

    /// The readable table: the hash, then one line per part.
    pub fn table(&self) -> String {
        let mut out = format!("inputs {}\n", self.hash);
        if !self.reusable() {
            out.push_str("not reusable:\n");
            for r in &self.not_reusable {
                out.push_str(&format!("  {r}\n"));
            }
        }
        let width = self.parts.keys().map(|k| k.chars().count()).max().unwrap_or(0);
        for (name, value) in &self.parts {
            out.push_str(&format!("{name:<width$}  {}\n", summary(value)));
        }
        if !self.not_deciding.is_empty() {
            out.push_str(&format!("not deciding: {}\n", self.not_deciding.join(" ")));
        }
        out
    }
}

/// One line for a part's value.
fn summary(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => plain(other),
    }
}

/// What differs from `old` to `new`, one line per part, in part order:
/// `config.sh: content changed`, `root/etc/motd added`, `repository
/// bookworm: InRelease changed`, `kiwi-ng 11.1.6 -> 11.2.0`.
pub fn differences(old: &Record, new: &Record) -> Vec<String> {
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> = old.parts.keys().chain(new.parts.keys()).collect();
    for name in names {
        match (old.parts.get(name), new.parts.get(name)) {
            (None, Some(_)) => out.push(format!("{name} added")),
            (Some(_), None) => out.push(format!("{name} removed")),
            (Some(a), Some(b)) if a != b => out.push(changed(name, a, b)),
            _ => {}
        }
    }
    out
}

fn changed(name: &str, old: &Value, new: &Value) -> String {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            let differ: Vec<&str> = keys
                .into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(String::as_str)
                .collect();
            format!("{name}: {} changed", differ.join(", "))
        }
        (a, b) => format!("{name} {} -> {}", plain(a), plain(b)),
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

/// Bytes as a record spells them: UTF-8 as it is, `\` doubled, control
/// characters and bytes that are no UTF-8 as `\xNN`, so that two names
/// never spell the same.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The names of the parts that are no file.
const NAMED_PARTS: &[&str] = &[
    "architecture",
    "args",
    "base images",
    "description",
    "image type",
    "kiwi-ng",
    "layer format",
    "profiles",
];

/// The part name of a file at the escaped relative path `path`: the path,
/// or `./path` where that would be the name of another part (a relative
/// path never starts with `./`, so no two parts share a name).
fn file_part(path: String) -> String {
    if NAMED_PARTS.contains(&path.as_str()) || path.starts_with("repository ") {
        format!("./{path}")
    } else {
        path
    }
}

/// Every entry under `dir` (not `dir` itself), sorted by its escaped path:
/// type, mode, owner, and the content's sha256 for a file, the target of a
/// symlink (never followed), the device number of a device node.
fn files_of(dir: &Path) -> Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    let walk = walkdir::WalkDir::new(dir).follow_links(false).min_depth(1);
    for entry in walk {
        let entry = entry.wrap_err_with(|| format!("reading the description directory {}", dir.display()))?;
        let rel = entry.path().strip_prefix(dir).expect("walkdir stays under its root");
        let name = file_part(escape(rel.as_os_str().as_bytes()));
        let meta = entry
            .path()
            .symlink_metadata()
            .wrap_err_with(|| format!("reading {}", entry.path().display()))?;
        let ft = meta.file_type();
        let mut v = Map::new();
        v.insert("mode".into(), json!(format!("{:04o}", meta.mode() & 0o7777)));
        v.insert("owner".into(), json!(format!("{}:{}", meta.uid(), meta.gid())));
        let kind = if ft.is_symlink() {
            let target = std::fs::read_link(entry.path())
                .wrap_err_with(|| format!("reading the link {}", entry.path().display()))?;
            v.insert("target".into(), json!(escape(target.as_os_str().as_bytes())));
            "symlink"
        } else if ft.is_dir() {
            "directory"
        } else if ft.is_file() {
            v.insert("content".into(), json!(file_sha256(entry.path())?));
            v.insert("size".into(), json!(meta.len()));
            "file"
        } else if ft.is_block_device() || ft.is_char_device() {
            v.insert("device".into(), json!(format!("{}", meta.rdev())));
            if ft.is_block_device() {
                "block device"
            } else {
                "character device"
            }
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        v.insert("type".into(), json!(kind));
        out.push((name, Value::Object(v)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `sha256:...` of a regular file's content, opened without following a
/// symlink that replaced it meanwhile.
fn file_sha256(path: &Path) -> Result<String> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let mut f = rustix::fs::open(path, flags, Mode::empty())
        .map(std::fs::File::from)
        .wrap_err_with(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).wrap_err_with(|| format!("reading {}", path.display()))?;
    Ok(Digest::from_hasher(h).to_string())
}

/// The arguments after `--` split into those that decide the root and the
/// rest, each option with its value (`--add-package vim`, one string).
fn split_args(args: &[OsString]) -> (Vec<String>, Vec<String>) {
    let (mut deciding, mut rest) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let text = escape(arg.as_bytes());
        let name = text.split('=').next().unwrap_or_default().to_string();
        let mut item = text.clone();
        if !text.contains('=') && !NO_VALUE.contains(&name.as_str()) {
            if let Some(v) = it.next() {
                item = format!("{text}={}", escape(v.as_bytes()));
            }
        }
        if DECIDING.contains(&name.as_str()) {
            deciding.push(item);
        } else {
            rest.push(item);
        }
    }
    (deciding, rest)
}

/// A repository the build reads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Repository {
    alias: Option<String>,
    kind: String,
    path: String,
    distribution: Option<String>,
    components: Option<String>,
}

impl Repository {
    /// `repository ALIAS`: its alias, else its apt suite, else its path.
    fn name(&self) -> String {
        let id = self
            .alias
            .clone()
            .or_else(|| self.distribution.clone())
            .unwrap_or_else(|| self.path.clone());
        format!("repository {id}")
    }

    /// Its name, the identity of its current metadata, and why that could
    /// not be read.
    fn state(&self) -> (String, Value, Option<String>) {
        let mut v = Map::new();
        v.insert("type".into(), json!(self.kind));
        v.insert("source".into(), json!(self.path));
        if let Some(d) = &self.distribution {
            v.insert("distribution".into(), json!(d));
        }
        if let Some(c) = &self.components {
            v.insert("components".into(), json!(c));
        }
        let problem = match self.metadata() {
            Ok((key, digest)) => {
                v.insert(key.into(), json!(digest));
                None
            }
            Err(e) => {
                // The reason (with curl's timings) stays out of the hash.
                v.insert("unreadable".into(), json!(true));
                Some(format!("{e:#}"))
            }
        };
        (self.name(), Value::Object(v), problem)
    }

    /// Which metadata names the repository's state, and its digest.
    fn metadata(&self) -> Result<(&'static str, String)> {
        let path = self.path.trim_end_matches('/');
        let local = path
            .strip_prefix("dir://")
            .or_else(|| path.strip_prefix("file://"))
            .or_else(|| path.starts_with('/').then_some(path));
        if let Some(dir) = local {
            return Ok(("listing", listing_sha256(Path::new(dir))?));
        }
        if !(path.starts_with("http://") || path.starts_with("https://")) {
            return Err(eyre!(
                "a source {path} is not read: only http(s), dir:// and local paths are"
            ));
        }
        match self.kind.as_str() {
            "apt-deb" => {
                let dist = self
                    .distribution
                    .as_deref()
                    .ok_or_else(|| eyre!("an apt-deb repository without distribution"))?;
                let base = format!("{path}/dists/{dist}");
                match fetch(&format!("{base}/InRelease")) {
                    Ok(bytes) => Ok(("InRelease", Digest::of(&bytes).to_string())),
                    Err(first) => match fetch(&format!("{base}/Release")) {
                        Ok(bytes) => Ok(("Release", Digest::of(&bytes).to_string())),
                        Err(_) => Err(first),
                    },
                }
            }
            "rpm-md" => Ok((
                "repomd.xml",
                Digest::of(&fetch(&format!("{path}/repodata/repomd.xml"))?).to_string(),
            )),
            other => Err(eyre!("a repository of type {other} is not read")),
        }
    }
}

/// `url` fetched with curl: a child process like skopeo, so no HTTP and TLS
/// stack is built into the binary, and the system's CA store and proxy
/// settings apply as for every other tool.
fn fetch(url: &str) -> Result<Vec<u8>> {
    let args = tools::args([
        "--silent",
        "--show-error",
        "--fail",
        "--location",
        "--proto",
        "=http,https",
        "--max-time",
        FETCH_TIMEOUT,
        "--",
        url,
    ]);
    // curl's one line (`curl: (7) Failed to connect ...`) is the reason kept.
    let explain = |stderr: &str| {
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty())?;
        Some((
            last.trim().to_string(),
            "check that the repository answers from this machine".to_string(),
        ))
    };
    tools::run_explained(Tool::Curl, &args, Output::Capture, explain).wrap_err_with(|| format!("fetching {url}"))
}

/// `sha256:...` of a local repository's listing: every entry's escaped
/// path, type, size and mtime (ns), sorted; links not followed.
fn listing_sha256(dir: &Path) -> Result<String> {
    if !dir.is_dir() {
        return Err(eyre!("{} is no directory", dir.display()));
    }
    let mut lines = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false).min_depth(1) {
        let entry = entry.wrap_err_with(|| format!("listing {}", dir.display()))?;
        let meta = entry.path().symlink_metadata()?;
        let rel = entry.path().strip_prefix(dir).expect("walkdir stays under its root");
        lines.push(format!(
            "{}\t{:o}\t{}\t{}.{:09}\n",
            escape(rel.as_os_str().as_bytes()),
            meta.mode(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        ));
    }
    lines.sort();
    Ok(Digest::of(lines.concat().as_bytes()).to_string())
}

/// The repositories the build reads: the description's, selected by the
/// profiles (those of `--profile`, else the profiles marked `import`), unless
/// `--ignore-repos`; the first replaced by `--set-repo`; and `--add-repo`'s.
fn repositories(doc: Option<&Document>, profiles: &[String], deciding: &[String]) -> Vec<Repository> {
    let mut out = Vec::new();
    let ignore = deciding
        .iter()
        .any(|a| a == "--ignore-repos" || a == "--ignore-repos-used-for-build");
    if let (Some(doc), false) = (doc, ignore) {
        let selected: Vec<String> = if profiles.is_empty() {
            doc.root()
                .elements_named("profiles")
                .flat_map(|p| p.elements_named("profile"))
                .filter(|p| p.attr("import") == Some("true"))
                .filter_map(|p| p.attr("name").map(str::to_string))
                .collect()
        } else {
            profiles.to_vec()
        };
        for r in doc.root().elements_named("repository") {
            let wanted = match r.attr("profiles") {
                None => true,
                Some(p) => p.split(',').any(|p| selected.iter().any(|s| s == p.trim())),
            };
            let Some(path) = r.first("source").and_then(|s| s.attr("path")) else {
                continue;
            };
            if wanted {
                out.push(Repository {
                    alias: r.attr("alias").map(str::to_string),
                    kind: r.attr("type").unwrap_or("rpm-md").to_string(),
                    path: path.to_string(),
                    distribution: r.attr("distribution").map(str::to_string),
                    components: r.attr("components").map(str::to_string),
                });
            }
        }
    }
    for arg in deciding {
        let (set, value) = if let Some(v) = arg.strip_prefix("--set-repo=") {
            (true, v)
        } else if let Some(v) = arg.strip_prefix("--add-repo=") {
            (false, v)
        } else {
            continue;
        };
        // kiwi-ng: source,type,alias,priority,imageinclude,package_gpgcheck,
        // {signing_keys},components,distribution,repo_gpgcheck
        let fields: Vec<&str> = value.split(',').collect();
        let field = |i: usize| fields.get(i).filter(|f| !f.is_empty()).map(|f| f.to_string());
        let repo = Repository {
            alias: field(2),
            kind: field(1).unwrap_or_else(|| "rpm-md".into()),
            path: fields[0].to_string(),
            distribution: field(8),
            components: field(7),
        };
        if set && !out.is_empty() {
            out[0] = repo;
        } else {
            out.push(repo);
        }
    }
    out
}

/// The record an image carries: the label `io.kiwi-stackbuild.inputs.record`
/// read and checked against `io.kiwi-stackbuild.inputs`.
pub fn of_labels(labels: &BTreeMap<String, String>) -> Result<Option<Record>> {
    let Some(text) = labels.get(labels::INPUTS_RECORD) else {
        return Ok(None);
    };
    let record = Record::from_json(text)?;
    if labels.get(labels::INPUTS) != Some(&record.hash) {
        return Err(eyre!(
            "the label {} does not match the hash of the record beside it",
            labels::INPUTS
        ));
    }
    Ok(Some(record))
}

/// The input record the image `reference` carries, for `--against`
/// (looked up as [`stored`] does): an error when there is no such image,
/// or it carries none.
pub fn against(store: &Store, reference: &ImageReference, auth: &RegistryAuth) -> Result<Record> {
    let Some(found) = stored(store, reference, auth)? else {
        if let ImageReference::Stash(r) = reference {
            // Says what there is instead.
            store.resolve(&r.key())?;
        }
        return Err(eyre!("there is no image {reference}"));
    };
    found
        .record
        .ok_or_else(|| eyre!("{reference} carries no input record (label {})", labels::INPUTS_RECORD))
}

/// The bases of a build as its record names them, resolved without
/// fetching any: a stash by its manifest digest in `store`, any other
/// image by the digest of the manifest its source serves for this machine
/// (one manifest request). A build and `inputs` name them alike, so that a
/// record made on one machine is the record of the same build on another.
/// An image that cannot be asked is named by its reference (and the
/// record cannot vouch for a root), with a warning that says why.
pub fn resolve_bases(store: &Store, roots: &[ImageReference], auth: &RegistryAuth) -> Result<Vec<Base>> {
    roots
        .iter()
        .map(|r| match r {
            ImageReference::Stash(stash) => {
                let _lock = store.lock_shared()?;
                Ok(Base::resolved(r, &store.resolve(&stash.key())?.sha256()?.to_string()))
            }
            other => Ok(match transfer::remote_digest(other, auth) {
                Ok(digest) => Base::resolved(other, &digest.to_string()),
                Err(e) => {
                    log::warn!("the base image {other} is named by its reference in the input record: {e:#}");
                    Base::ByReference(other.to_string())
                }
            }),
        })
        .collect()
}

/// What an image says of the build that made it.
#[derive(Debug)]
pub struct Stored {
    /// Its input record (`None`: it carries none).
    pub record: Option<Record>,
    /// When it was made, as its config says.
    pub created: Option<String>,
    /// The image itself: a registry image pinned to the manifest read.
    pub image: ImageReference,
}

/// Looks up the image `reference` (a stash, or any image skopeo reads)
/// for its input record, fetching no layer: `None` when there is no such
/// image. An image elsewhere costs a manifest request, and a config
/// request unless the store holds that image.
pub fn stored(store: &Store, reference: &ImageReference, auth: &RegistryAuth) -> Result<Option<Stored>> {
    let (config, image) = match reference {
        ImageReference::Stash(r) => {
            let Some(_lock) = store.lock_shared()? else {
                return Ok(None);
            };
            let Some(desc) = store.find(&store.index()?, &r.key()) else {
                return Ok(None);
            };
            let manifest = store.manifest(&desc.sha256()?)?;
            (store.config(&manifest.config().sha256()?)?, reference.clone())
        }
        other => match transfer::remote_config(store, other, auth) {
            Ok(found) => found,
            Err(e) if e.chain().any(|c| c.to_string() == crate::registry::NO_SUCH_IMAGE) => return Ok(None),
            Err(e) => return Err(e),
        },
    };
    let record = of_labels(&config.labels()).wrap_err_with(|| format!("reading the input record of {reference}"))?;
    Ok(Some(Stored {
        record,
        created: config.created,
        image,
    }))
}

/// The inputs of `against` differ from those now: the command's exit status 1.
#[derive(Debug)]
pub struct Differ(pub String);

impl std::fmt::Display for Differ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for Differ {}

impl Differ {
    /// The exit status when the inputs differ.
    pub const EXIT_CODE: u8 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const XML: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="t">
    <description type="system"><author>A</author><contact>a</contact><specification>s</specification></description>
    <profiles><profile name="big" description="b"/><profile name="small" description="s" import="true"/></profiles>
    <preferences><version>1.0</version><packagemanager>apt</packagemanager><type image="tbz"/></preferences>
    <repository type="apt-deb" alias="local" profiles="small"><source path="dir://@DIR@"/></repository>
    <repository type="apt-deb" alias="other" profiles="big"><source path="dir://@DIR@/pool"/></repository>
</image>
"#;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            std::fs::create_dir_all(d.join("desc/root/etc")).unwrap();
            std::fs::create_dir_all(d.join("repo/pool")).unwrap();
            std::fs::write(d.join("repo/pool/a.deb"), "a").unwrap();
            let xml = XML.replace("@DIR@", d.join("repo").to_str().unwrap());
            std::fs::write(d.join("desc/config.xml"), xml).unwrap();
            std::fs::write(d.join("desc/config.sh"), "#!/bin/sh\n").unwrap();
            std::fs::write(d.join("desc/root/etc/motd"), "hi\n").unwrap();
            std::os::unix::fs::symlink("../../etc/passwd", d.join("desc/root/etc/link")).unwrap();
            Fixture { dir }
        }

        fn desc(&self) -> PathBuf {
            self.dir.path().join("desc")
        }

        fn record(&self, globals: &Globals, args: &[&str]) -> Record {
            let args: Vec<OsString> = args.iter().map(OsString::from).collect();
            let desc = self.desc();
            Record::compute(&Request {
                dir: Some(&desc),
                globals: Some(globals),
                args: &args,
                bases: vec![],
                kiwi_version: Some("11.1.6".into()),
            })
            .unwrap()
        }
    }

    use std::path::PathBuf;

    fn plain(f: &Fixture) -> Record {
        f.record(&Globals::default(), &["--target-dir", "/t"])
    }

    #[test]
    fn the_same_inputs_give_the_same_hash_and_the_target_does_not_count() {
        let f = Fixture::new();
        let a = plain(&f);
        let b = f.record(&Globals::default(), &["--target-dir", "/elsewhere"]);
        assert_eq!(a.hash, b.hash);
        assert!(a.hash.starts_with("sha256:") && a.hash.len() == 71, "{}", a.hash);
        assert!(a.reusable(), "{:?}", a.not_reusable);
        assert_eq!(b.not_deciding, ["--target-dir=/elsewhere"]);
        // What a label carries reads back to the same record.
        assert_eq!(Record::from_json(&a.to_canonical()).unwrap(), a);
        assert!(differences(&a, &b).is_empty());
    }

    /// A change, the record after it, and the line that names it.
    type Case<'a> = (Box<dyn Fn() + 'a>, Box<dyn Fn() -> Record + 'a>, &'static str);

    #[test]
    fn each_change_is_named() {
        let f = Fixture::new();
        let before = plain(&f);
        let d = f.desc();
        let cases: Vec<Case> = vec![
            (
                Box::new(|| std::fs::write(d.join("config.sh"), "#!/bin/sh\necho\n").unwrap()),
                Box::new(|| plain(&f)),
                "config.sh: content, size changed",
            ),
            (
                Box::new(|| std::fs::write(d.join("root/etc/issue"), "x").unwrap()),
                Box::new(|| plain(&f)),
                "root/etc/issue added",
            ),
            (
                Box::new(|| {
                    std::fs::set_permissions(d.join("root/etc/motd"), std::fs::Permissions::from_mode(0o600)).unwrap()
                }),
                Box::new(|| plain(&f)),
                "root/etc/motd: mode changed",
            ),
            (
                Box::new(|| {
                    std::fs::remove_file(d.join("root/etc/link")).unwrap();
                    std::os::unix::fs::symlink("/etc/shadow", d.join("root/etc/link")).unwrap();
                }),
                Box::new(|| plain(&f)),
                "root/etc/link: target changed",
            ),
            (
                Box::new(|| {}),
                Box::new(|| f.record(&Globals::default(), &["--target-dir", "/t", "--add-package", "vim"])),
                "args [] -> [\"--add-package=vim\"]",
            ),
            (
                Box::new(|| {}),
                Box::new(|| {
                    let g = Globals {
                        profiles: vec!["big".into()],
                        ..Globals::default()
                    };
                    f.record(&g, &["--target-dir", "/t"])
                }),
                "profiles [] -> [\"big\"]",
            ),
        ];
        let mut old = before;
        for (change, record, want) in cases {
            change();
            let new = record();
            let diff = differences(&old, &new);
            assert!(diff.iter().any(|l| l == want), "want {want:?} in {diff:?}");
            assert_ne!(old.hash, new.hash, "{want}");
            old = plain(&f);
        }
    }

    #[test]
    fn a_profile_selects_its_repositories() {
        let f = Fixture::new();
        let none = plain(&f);
        assert!(none.parts.contains_key("repository local"), "{:?}", none.parts.keys());
        assert!(!none.parts.contains_key("repository other"));
        let g = Globals {
            profiles: vec!["big".into()],
            ..Globals::default()
        };
        let big = f.record(&g, &[]);
        assert!(big.parts.contains_key("repository other"));
        assert!(!big.parts.contains_key("repository local"));
        // A new file in the local repository changes its listing.
        std::fs::write(f.dir.path().join("repo/pool/b.deb"), "b").unwrap();
        let diff = differences(&big, &f.record(&g, &[]));
        assert_eq!(diff, ["repository other: listing changed"]);
        let ignored = f.record(&Globals::default(), &["--ignore-repos"]);
        assert!(!ignored.parts.keys().any(|k| k.starts_with("repository")));
    }

    #[test]
    fn a_missing_repository_makes_it_not_reusable() {
        let f = Fixture::new();
        let r = f.record(
            &Globals::default(),
            &["--add-repo", "dir:///nonexistent/repo,apt-deb,gone"],
        );
        assert!(!r.reusable());
        assert!(
            r.not_reusable[0].starts_with("repository gone: "),
            "{:?}",
            r.not_reusable
        );
        assert!(r.to_json()["reusable"] == json!(false));
    }

    #[test]
    fn hostile_names_are_escaped_and_links_not_followed() {
        let f = Fixture::new();
        let d = f.desc();
        let odd = OsString::from(std::ffi::OsStr::from_bytes(b"root/a\\x41\n\xff"));
        std::fs::write(d.join(&odd), "x").unwrap();
        std::os::unix::fs::symlink("/etc", d.join("root/out")).unwrap();
        let r = plain(&f);
        assert!(r.parts.contains_key("root/a\\\\x41\\x0a\\xff"), "{:?}", r.parts.keys());
        assert_eq!(r.parts["root/out"]["type"], "symlink");
        assert_eq!(r.parts["root/out"]["target"], "/etc");
        assert!(!r.parts.keys().any(|k| k.starts_with("root/out/")));
        std::fs::write(d.join("args"), "x").unwrap();
        std::fs::write(d.join("repository bookworm"), "x").unwrap();
        let r = plain(&f);
        assert_eq!(r.parts["args"], json!([]));
        assert_eq!(r.parts["./args"]["type"], "file");
        assert_eq!(r.parts["./repository bookworm"]["type"], "file");
        assert_eq!(escape(b"\\x41"), "\\\\x41");
        assert_ne!(escape(b"\\xff"), escape(b"\xff"));
    }

    #[test]
    fn an_edited_record_label_is_refused() {
        let f = Fixture::new();
        let r = plain(&f);
        let text = r.to_canonical().replace("11.1.6", "11.1.7");
        assert!(Record::from_json(&text).is_err());
        let mut labels = BTreeMap::new();
        labels.insert(labels::INPUTS_RECORD.to_string(), r.to_canonical());
        labels.insert(labels::INPUTS.to_string(), "sha256:00".to_string());
        assert!(of_labels(&labels).is_err());
        labels.insert(labels::INPUTS.to_string(), r.hash.clone());
        assert_eq!(of_labels(&labels).unwrap(), Some(r));
    }
}
