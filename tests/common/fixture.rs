//! The KIWI fixtures under `fixtures/`, ready to build on this machine: the
//! Debian description gets the machine's own Debian mirror filled in, so no
//! host name is written into the repository.

use std::env;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

/// The text in fixture files that stands for the Debian mirror URI.
pub const MIRROR_PLACEHOLDER: &str = "@DEBIAN_MIRROR@";
/// The Debian suite the fixture description installs.
const SUITE: &str = "bookworm";
/// Where apt keeps its sources list, and the directory of the others.
const SOURCES_LIST: &str = "/etc/apt/sources.list";
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";

/// The repository's `fixtures/` directory.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The kiwi-ng runtime configuration for tests (`kiwi-ng --config`): fast xz.
pub fn kiwi_config() -> PathBuf {
    fixtures_dir().join("kiwi.yml")
}

/// The kiwi-ng executable: `KIWI_NG` if set, else `kiwi-ng` from PATH.
pub fn kiwi_ng() -> OsString {
    env::var_os("KIWI_NG")
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| "kiwi-ng".into())
}

/// Copies `fixtures/debian-bookworm` to `dest/debian-bookworm` with the
/// mirror filled in, and returns the copy's path.
pub fn debian_description(dest: &Path) -> PathBuf {
    description("debian-bookworm", dest)
}

/// Copies the fixture description `fixtures/NAME` to `dest/NAME`, with
/// `@DEBIAN_MIRROR@` replaced by `debian_mirror()` in every text file, and
/// returns the copy's path. File modes are kept.
pub fn description(name: &str, dest: &Path) -> PathBuf {
    let source = fixtures_dir().join(name);
    let target = dest.join(name);
    for item in WalkDir::new(&source) {
        let item = item.unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
        let to = target.join(item.path().strip_prefix(&source).unwrap());
        if item.file_type().is_dir() {
            fs::create_dir_all(&to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
        } else {
            copy_filled(item.path(), &to);
        }
    }
    target
}

fn copy_filled(from: &Path, to: &Path) {
    let bytes = fs::read(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
    let bytes = match String::from_utf8(bytes) {
        Ok(text) if text.contains(MIRROR_PLACEHOLDER) => {
            text.replace(MIRROR_PLACEHOLDER, &debian_mirror()).into_bytes()
        }
        Ok(text) => text.into_bytes(),
        Err(binary) => binary.into_bytes(),
    };
    fs::write(to, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", to.display()));
    let permissions = fs::metadata(from).unwrap().permissions();
    fs::set_permissions(to, permissions).unwrap();
}

/// The Debian archive URI this machine's apt uses for `bookworm main`,
/// without a trailing slash: taken from `DEBIAN_MIRROR` when set, else from
/// the first matching entry of `/etc/apt/sources.list`, then of
/// `/etc/apt/sources.list.d/*.list` and `*.sources` in name order.
/// Entries for other suites (`bookworm-security`, `nodistro`, ...) and
/// entries signed by a keyring other than Debian's are skipped.
pub fn debian_mirror() -> String {
    if let Some(mirror) = env::var("DEBIAN_MIRROR").ok().filter(|value| !value.is_empty()) {
        return mirror.trim_end_matches('/').to_string();
    }
    source_files()
        .iter()
        .find_map(|path| mirror_in_file(path))
        .unwrap_or_else(|| {
            panic!("no Debian {SUITE} main repository in {SOURCES_LIST} or {SOURCES_DIR}; set DEBIAN_MIRROR")
        })
}

fn source_files() -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = fs::read_dir(SOURCES_DIR)
        .into_iter()
        .flatten()
        .filter_map(|item| Some(item.ok()?.path()))
        .filter(|path| matches!(path.extension().and_then(OsStr::to_str), Some("list" | "sources")))
        .collect();
    parts.sort();
    [vec![PathBuf::from(SOURCES_LIST)], parts].concat()
}

fn mirror_in_file(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    if path.extension() == Some(OsStr::new("sources")) {
        mirror_in_deb822_sources(&text)
    } else {
        mirror_in_one_line_sources(&text)
    }
}

/// The first Debian `bookworm main` URI in one-line sources text
/// (`deb [options] URI SUITE COMPONENT...`).
pub fn mirror_in_one_line_sources(text: &str) -> Option<String> {
    text.lines()
        .filter_map(parse_one_line)
        .find_map(|source| source.debian_mirror())
}

/// The first Debian `bookworm main` URI in deb822 sources text
/// (stanzas of `Types:`, `URIs:`, `Suites:`, `Components:` fields).
pub fn mirror_in_deb822_sources(text: &str) -> Option<String> {
    stanzas(text)
        .iter()
        .filter_map(|stanza| parse_stanza(stanza))
        .find_map(|source| source.debian_mirror())
}

/// One apt source: the fields that decide whether it is the Debian archive.
struct Source {
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
    signed_by: Option<String>,
}

impl Source {
    fn debian_mirror(&self) -> Option<String> {
        let wanted = self.suites.iter().any(|suite| suite == SUITE)
            && self.components.iter().any(|component| component == "main")
            && self.signed_by.as_deref().is_none_or(is_debian_keyring);
        let uri = self.uris.first().filter(|_| wanted)?;
        Some(uri.trim_end_matches('/').to_string())
    }
}

// A third-party repository may well serve `bookworm main` too; its own
// keyring gives it away.
fn is_debian_keyring(signed_by: &str) -> bool {
    signed_by.split_whitespace().any(|path| {
        let name = Path::new(path).file_name().and_then(OsStr::to_str).unwrap_or("");
        name.starts_with("debian-archive-")
    })
}

fn parse_one_line(line: &str) -> Option<Source> {
    let line = line.split('#').next().unwrap_or("").trim();
    let rest = line.strip_prefix("deb")?;
    if !rest.starts_with(char::is_whitespace) {
        return None; // deb-src
    }
    let rest = rest.trim_start();
    let (options, rest) = match rest.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']')?,
        None => ("", rest),
    };
    let mut words = rest.split_whitespace().map(str::to_string);
    Some(Source {
        uris: vec![words.next()?],
        suites: vec![words.next()?],
        components: words.collect(),
        signed_by: options
            .split_whitespace()
            .find_map(|o| o.strip_prefix("signed-by="))
            .map(str::to_string),
    })
}

/// Stanzas of deb822 text as (lowercase field name, value) lists; comment
/// lines dropped, continuation lines joined to their field.
fn stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stanzas = vec![Vec::new()];
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let current: &mut Vec<(String, String)> = stanzas.last_mut().unwrap();
        if line.trim().is_empty() {
            if !current.is_empty() {
                stanzas.push(Vec::new());
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            current.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    stanzas
}

fn parse_stanza(fields: &[(String, String)]) -> Option<Source> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let words = |name: &str| {
        field(name)
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let types: Vec<String> = words("types");
    if !types.iter().any(|kind| kind == "deb") || field("enabled") == Some("no") {
        return None;
    }
    Some(Source {
        uris: words("uris"),
        suites: words("suites"),
        components: words("components"),
        signed_by: field("signed-by").map(str::to_string),
    })
}
