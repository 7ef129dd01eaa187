//! KIWI result archives (`*.tar.xz`) read entry by entry, so two builds can
//! be compared in everything the archive records: type, mode, owner ids and
//! names, size, link target, mtime to the nanosecond (PAX `mtime`), device
//! numbers, xattrs and the sha256 of every regular file.
//!
//! atime and ctime are not compared: GNU tar records both in every PAX
//! header, and no unpacker can set a ctime, so no rebuild can repeat them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::tree::escape;

/// How many differences a failure message lists.
const SHOWN_DIFFERENCES: usize = 30;

/// The root archive (`*.tar.xz`) KIWI wrote into `target`.
pub fn result_archive(target: &Path) -> PathBuf {
    fs::read_dir(target)
        .unwrap_or_else(|e| panic!("reading {}: {e}", target.display()))
        .map(|item| item.unwrap().path())
        .find(|path| path.to_string_lossy().ends_with(".tar.xz"))
        .unwrap_or_else(|| panic!("no .tar.xz in {}", target.display()))
}

/// One archive entry, as far as a rebuild must repeat it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// `-`, `h`, `l`, `d`, `c`, `b`, `p` as `tar -tv` shows them; other
    /// types as `?` followed by the header's type byte.
    pub kind: String,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    /// Size of the stored data (0 for everything but regular files).
    pub size: u64,
    /// Symlink or hard link target.
    pub link: Option<Vec<u8>>,
    /// Seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Major and minor of a device node.
    pub device: Option<(u32, u32)>,
    /// `SCHILY.xattr.*` records, by xattr name.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// sha256 of a regular file's content.
    pub sha256: Option<String>,
}

/// An archive's entries in archive order, by normalised path: no leading
/// `./`, no trailing `/`, and the root itself as `./`.
pub type Entries = Vec<(Vec<u8>, ArchiveEntry)>;

/// Reads `archive` (xz-compressed tar) with `xz -dc`, entry by entry.
pub fn read_archive(archive: &Path) -> Entries {
    let mut xz = Command::new("xz")
        .arg("-dc")
        .arg(archive)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running xz -dc {}: {e}", archive.display()));
    let mut out = xz.stdout.take().unwrap();
    let mut entries = Vec::new();
    {
        let mut tar = tar::Archive::new(&mut out);
        for entry in tar
            .entries()
            .unwrap_or_else(|e| panic!("reading {}: {e}", archive.display()))
        {
            let mut entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", archive.display()));
            let path = normalise(&entry.path_bytes());
            let read = read_entry(&mut entry)
                .unwrap_or_else(|e| panic!("reading {} in {}: {e}", escape(&path), archive.display()));
            entries.push((path, read));
        }
    }
    // The tar reader stops at the end-of-archive blocks; xz must not die of
    // a closed pipe before it has checked the whole stream.
    io::copy(&mut out, &mut io::sink()).unwrap();
    let status = xz.wait().unwrap();
    assert!(status.success(), "xz -dc {} failed: {status}", archive.display());
    entries
}

fn normalise(raw: &[u8]) -> Vec<u8> {
    let mut path = raw;
    while let Some(rest) = path.strip_prefix(b"./") {
        path = rest;
    }
    while let Some(rest) = path.strip_suffix(b"/") {
        path = rest;
    }
    if path.is_empty() || path == b"." {
        return b"./".to_vec();
    }
    path.to_vec()
}

fn read_entry<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<ArchiveEntry> {
    let mut pax: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    if let Some(records) = entry.pax_extensions()? {
        for record in records {
            let record = record?;
            pax.insert(record.key_bytes().to_vec(), record.value_bytes().to_vec());
        }
    }
    let header = entry.header().clone();
    let kind = match header.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => "-".to_string(),
        tar::EntryType::Link => "h".to_string(),
        tar::EntryType::Symlink => "l".to_string(),
        tar::EntryType::Directory => "d".to_string(),
        tar::EntryType::Char => "c".to_string(),
        tar::EntryType::Block => "b".to_string(),
        tar::EntryType::Fifo => "p".to_string(),
        other => format!("?{}", other.as_byte() as char),
    };
    let number = |key: &[u8], from_header: io::Result<u64>| -> io::Result<u64> {
        match pax.get(key) {
            Some(value) => String::from_utf8_lossy(value)
                .parse()
                .map_err(|e| io::Error::other(format!("PAX {}: {e}", String::from_utf8_lossy(key)))),
            None => from_header,
        }
    };
    let name = |key: &[u8], from_header: Option<&[u8]>| {
        pax.get(key)
            .cloned()
            .unwrap_or_else(|| from_header.unwrap_or_default().to_vec())
    };
    let mtime = match pax.get(b"mtime".as_slice()) {
        Some(value) => parse_pax_time(value)?,
        None => (header.mtime()? as i64, 0),
    };
    let device = match kind.as_str() {
        "c" | "b" => Some((header.device_major()?.unwrap_or(0), header.device_minor()?.unwrap_or(0))),
        _ => None,
    };
    let xattrs = pax
        .iter()
        .filter_map(|(key, value)| Some((key.strip_prefix(b"SCHILY.xattr.")?.to_vec(), value.clone())))
        .collect();
    let link = entry.link_name_bytes().map(|target| target.into_owned());
    let size = entry.size();
    let sha256 = if kind == "-" {
        let mut hasher = Sha256::new();
        io::copy(entry, &mut hasher)?;
        Some(format!("{:x}", hasher.finalize()))
    } else {
        None
    };
    Ok(ArchiveEntry {
        kind,
        mode: header.mode()? & 0o7777,
        uid: number(b"uid", header.uid())?,
        gid: number(b"gid", header.gid())?,
        uname: name(b"uname", header.username_bytes()),
        gname: name(b"gname", header.groupname_bytes()),
        size,
        link,
        mtime,
        device,
        xattrs,
        sha256,
    })
}

/// A PAX time, `SECONDS[.FRACTION]`, as seconds and nanoseconds (a
/// negative time counts its fraction downwards too, as in `-1.5`).
pub fn parse_pax_time(value: &[u8]) -> io::Result<(i64, u32)> {
    let text = std::str::from_utf8(value).map_err(io::Error::other)?;
    let bad = || io::Error::other(format!("bad PAX time {text:?}"));
    let (secs, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits: String = fraction.chars().chain(std::iter::repeat('0')).take(9).collect();
    if !fraction.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let nanos: u32 = digits.parse().map_err(|_| bad())?;
    if text.starts_with('-') && nanos > 0 {
        return Ok((secs - 1, 1_000_000_000 - nanos));
    }
    Ok((secs, nanos))
}

/// One difference between two archives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// What differs: `missing in W2`, `only in W2`, or a field (`mtime`, ...).
    pub what: String,
    /// The path, quoted, and both sides.
    pub line: String,
}

/// Every difference between the archives `w1` and `w2`: entries missing
/// from W2, entries only W2 has, then field by field, each group in path
/// order.
pub fn archive_diff(w1: &Entries, w2: &Entries) -> Vec<Difference> {
    let first: BTreeMap<&Vec<u8>, &ArchiveEntry> = w1.iter().map(|(p, e)| (p, e)).collect();
    let second: BTreeMap<&Vec<u8>, &ArchiveEntry> = w2.iter().map(|(p, e)| (p, e)).collect();
    let mut diffs = Vec::new();
    let mut push = |what: &str, line: String| {
        diffs.push(Difference {
            what: what.to_string(),
            line,
        })
    };
    for (path, entry) in &first {
        if !second.contains_key(path) {
            push(
                "missing in W2",
                format!("{}: missing in W2 ({})", escape(path), describe(entry)),
            );
        }
    }
    for (path, entry) in &second {
        if !first.contains_key(path) {
            push(
                "only in W2",
                format!("{}: only in W2 ({})", escape(path), describe(entry)),
            );
        }
    }
    for (path, want) in &first {
        if let Some(got) = second.get(path) {
            for (what, text) in entry_diff(want, got) {
                push(&what, format!("{}: {what}: {text}", escape(path)));
            }
        }
    }
    for (side, entries) in [("W1", w1), ("W2", w2)] {
        let unique: BTreeSet<&Vec<u8>> = entries.iter().map(|(p, _)| p).collect();
        if unique.len() != entries.len() {
            push(
                "repeated path",
                format!("{side}'s archive names some paths more than once"),
            );
        }
    }
    diffs
}

/// A failure message for [`archive_diff`]'s differences, `None` if there
/// are none: how many of each kind, then the first ones.
pub fn archive_report(w1: &Entries, w2: &Entries) -> Option<String> {
    let diffs = archive_diff(w1, w2);
    if diffs.is_empty() {
        return None;
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for diff in &diffs {
        *counts.entry(diff.what.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(what, n)| format!("{what} {n}")).collect();
    let mut report = format!(
        "W2's archive differs from W1's in {} place(s) (W1 has {} entries, W2 {}): {}\n",
        diffs.len(),
        w1.len(),
        w2.len(),
        counts.join(", ")
    );
    for diff in diffs.iter().take(SHOWN_DIFFERENCES) {
        writeln!(report, "  {}", diff.line).unwrap();
    }
    if diffs.len() > SHOWN_DIFFERENCES {
        writeln!(report, "  ... and {} more", diffs.len() - SHOWN_DIFFERENCES).unwrap();
    }
    Some(report)
}

/// The fields in which two entries of one path differ, each with both sides.
fn entry_diff(want: &ArchiveEntry, got: &ArchiveEntry) -> Vec<(String, String)> {
    let mut diffs = Vec::new();
    let mut compare = |what: &str, want: String, got: String| {
        if want != got {
            diffs.push((what.to_string(), format!("W1 {want}, W2 {got}")));
        }
    };
    compare("type", want.kind.clone(), got.kind.clone());
    compare("mode", format!("{:04o}", want.mode), format!("{:04o}", got.mode));
    compare("owner", owner(want), owner(got));
    compare("size", want.size.to_string(), got.size.to_string());
    compare("link", link(&want.link), link(&got.link));
    compare("mtime", show_time(want.mtime), show_time(got.mtime));
    compare("device", device(want.device), device(got.device));
    compare(
        "content",
        want.sha256.clone().unwrap_or_default(),
        got.sha256.clone().unwrap_or_default(),
    );
    let names: BTreeSet<&Vec<u8>> = want.xattrs.keys().chain(got.xattrs.keys()).collect();
    for name in names {
        let value = |entry: &ArchiveEntry| entry.xattrs.get(name).map_or("absent".to_string(), |v| escape(v));
        compare(&format!("xattr {}", escape(name)), value(want), value(got));
    }
    diffs
}

fn describe(entry: &ArchiveEntry) -> String {
    let mut text = format!(
        "{} {:04o} {} {}",
        entry.kind,
        entry.mode,
        owner(entry),
        show_time(entry.mtime)
    );
    if let Some(target) = &entry.link {
        write!(text, " -> {}", escape(target)).unwrap();
    }
    if entry.kind == "-" {
        write!(text, ", {} bytes", entry.size).unwrap();
    }
    if let Some(dev) = entry.device {
        write!(text, ", device {}", device(Some(dev))).unwrap();
    }
    text
}

fn owner(entry: &ArchiveEntry) -> String {
    format!(
        "{}:{} ({}/{})",
        entry.uid,
        entry.gid,
        String::from_utf8_lossy(&entry.uname),
        String::from_utf8_lossy(&entry.gname)
    )
}

fn link(target: &Option<Vec<u8>>) -> String {
    target.as_ref().map_or("none".to_string(), |t| escape(t))
}

fn device(dev: Option<(u32, u32)>) -> String {
    dev.map_or("none".to_string(), |(major, minor)| format!("{major}:{minor}"))
}

/// `@SECONDS.NANOSECONDS`, all nine digits, so a truncation shows.
pub fn show_time((secs, nanos): (i64, u32)) -> String {
    format!("@{secs}.{nanos:09}")
}

/// `tar --full-time -tvJf` of `archive`, one line per entry, in archive
/// order. GNU tar shows the fraction of a second where the archive has one.
pub fn full_time_listing(archive: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("--full-time")
        .arg("-tvJf")
        .arg(archive)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running tar on {}: {e}", archive.display()));
    assert!(
        out.status.success(),
        "tar --full-time -tvJf {} failed: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A failure message for two listings that differ, `None` if they are
/// the same: the lines only one side has, or the first place where the
/// same lines come in another order. GNU tar pads its columns to the
/// widest entry seen so far, so lines are compared with their runs of
/// blanks squeezed; a difference in padding alone is named as such.
pub fn listing_report(w1: &[String], w2: &[String]) -> Option<String> {
    if w1 == w2 {
        return None;
    }
    let squeeze = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    let (w1, w2) = (squeeze(w1), squeeze(w2));
    let mut report = format!(
        "`tar --full-time -tvJf` listings differ (W1 {} lines, W2 {}):\n",
        w1.len(),
        w2.len()
    );
    if w1 == w2 {
        report.push_str("  only in the padding of their columns\n");
        return Some(report);
    }
    let (only_w1, only_w2) = (lines_lacking(&w1, &w2), lines_lacking(&w2, &w1));
    if only_w1.is_empty() && only_w2.is_empty() {
        let at = w1.iter().zip(&w2).position(|(a, b)| a != b).unwrap_or(0);
        writeln!(report, "  the same lines in another order, first at line {}:", at + 1).unwrap();
        writeln!(report, "  W1: {}\n  W2: {}", w1[at], w2[at]).unwrap();
        return Some(report);
    }
    for (side, lines) in [("only W1 has", &only_w1), ("only W2 has", &only_w2)] {
        writeln!(report, "  {} line(s) {side} (blanks squeezed):", lines.len()).unwrap();
        for line in lines.iter().take(SHOWN_DIFFERENCES / 2) {
            writeln!(report, "    {line}").unwrap();
        }
        if lines.len() > SHOWN_DIFFERENCES / 2 {
            writeln!(report, "    ... and {} more", lines.len() - SHOWN_DIFFERENCES / 2).unwrap();
        }
    }
    Some(report)
}

/// The lines of `a` that `b` lacks (as often as `a` has more of them than
/// `b`), in `a`'s order.
fn lines_lacking(a: &[String], b: &[String]) -> Vec<String> {
    let mut left: BTreeMap<&String, usize> = BTreeMap::new();
    for line in b {
        *left.entry(line).or_default() += 1;
    }
    a.iter()
        .filter(|line| match left.get_mut(line) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .cloned()
        .collect()
}

/// How the build in `t2` differs from the one in `t1` (whose archive is
/// `archive1`), `None` if not at all: the result archives entry by entry,
/// their `tar --full-time -tvJf` listings, and the image-root directory
/// itself (KIWI's tbz archive has no `./` entry, other image types carry
/// the root's mode, owner and mtime).
pub fn same_build_report(t1: &Path, archive1: &Entries, t2: &Path) -> Option<String> {
    let (file1, file2) = (result_archive(t1), result_archive(t2));
    let mut reports = Vec::new();
    reports.extend(archive_report(archive1, &read_archive(&file2)));
    reports.extend(listing_report(&full_time_listing(&file1), &full_time_listing(&file2)));
    let root = |t: &Path| {
        let meta = fs::symlink_metadata(t.join("build/image-root")).unwrap();
        format!(
            "mode {:04o}, owner {}:{}, mtime {}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid(),
            show_time((meta.mtime(), meta.mtime_nsec() as u32))
        )
    };
    let (root1, root2) = (root(t1), root(t2));
    if root1 != root2 {
        reports.push(format!(
            "the image-root directory itself differs: W1 {root1}, W2 {root2}\n"
        ));
    }
    (!reports.is_empty()).then(|| reports.concat())
}
