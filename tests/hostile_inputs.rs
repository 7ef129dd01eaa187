//! Hostile images and descriptions (DESIGN §4, §5). The tool runs as root on
//! input from anywhere: no entry, whiteout, symlink or copied file may reach
//! or create anything outside the directory it belongs to, no copy may hand
//! a setuid/setgid bit to a new owner, and bad input is refused with an
//! error whose first line names the offending entry, leaving nothing
//! half-written.
//!
//! Each run gets its own sandbox: fake tools in `bin/`, a sentinel tree
//! (files, a directory with children, symlinks) that hostile links point
//! into, the crafted image in `layout/`, the user's description in
//! `description/`, and TMPDIR in `tmp/`. The sentinel, the layout and the
//! description are snapshotted before and after the run, and must not
//! change. The binary's environment is cleared; PATH is only `bin/`:
//! - `kiwi-ng` records its argv (`argc\0arg\0...` in `$FAKE_ARGV_DIR`) and,
//!   given `--description D`, `stat -c '%a %u %g'` of D, of D's parent and
//!   of each file `$FAKE_KIWI_STAT` names inside D; it builds nothing;
//! - `skopeo copy oci:SRC:REF oci:DST:NAME` copies SRC's blobs byte for byte
//!   and REF's index entry, checking nothing: the binary must;
//! - there is no umoci, so the built-in unpacker runs.
//!
//! A run that takes over 60 s is killed and counts as hanging. Each test
//! reports every problem it finds, for every command it runs, before failing.
//!
//! Needs root, as `rebuild` does.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::crafted::{gzip, sha256, write_image, Entry, Layer, Tar, Type};
use common::tree::{snapshot, tree_diff, Snapshot};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_kiwi-stackbuild");
/// How long one run may take before it counts as hanging.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The owner of the setuid files in descriptions and images.
const NOBODY: u32 = 65534;

const FAKE_KIWI: &str = r#"#!/bin/sh
PATH=/usr/bin:/bin
# Asked for its options: it has none to list (the built-in list applies).
case " $* " in *" --help "*) exit 0 ;; esac
printf '%s\0' "$#" "$@" >> "$FAKE_ARGV_DIR/kiwi-ng"
if [ "$1" = --version ]; then
    echo "KIWI (next generation) version 9.9.9"
    exit 0
fi
desc=
while [ $# -gt 0 ]; do
    [ "$1" = --description ] && desc=$2
    shift
done
if [ -n "$desc" ]; then
    {
        stat -c 'DESCRIPTION %a %u %g' -- "$desc"
        stat -c 'PARENT %a %u %g' -- "$(dirname -- "$desc")"
        for f in $FAKE_KIWI_STAT; do
            if [ -e "$desc/$f" ]; then
                stat -c "$f %a %u %g" -- "$desc/$f"
            else
                echo "$f missing"
            fi
        done
    } >> "$FAKE_ARGV_DIR/stat"
fi
echo "fake kiwi-ng: nothing built"
"#;

const FAKE_SKOPEO: &str = r#"#!/usr/bin/python3
import json, os, sys

REF = "org.opencontainers.image.ref.name"
args = sys.argv[1:]
with open(os.path.join(os.environ["FAKE_ARGV_DIR"], "skopeo"), "ab") as log:
    log.write(b"".join(os.fsencode(a) + b"\0" for a in [str(len(args))] + args))
if args[:2] == ["inspect", "--raw"] and args[-1].startswith("oci:"):
    src, ref = args[-1][4:].rsplit(":", 1)
    with open(os.path.join(src, "index.json")) as f:
        desc = next(m for m in json.load(f)["manifests"] if m.get("annotations", {}).get(REF) == ref)
    with open(os.path.join(src, "blobs/sha256", desc["digest"][len("sha256:"):]), "rb") as f:
        sys.stdout.buffer.write(f.read())
    sys.exit(0)
if not args or args[0] != "copy" or not all(a.startswith("oci:") for a in args[-2:]):
    sys.exit("fake skopeo: only inspect --raw oci:SRC:REF and copy oci:SRC:REF oci:DST:NAME, not %r" % args)
(src, ref), (dst, name) = (a[4:].rsplit(":", 1) for a in args[-2:])
with open(os.path.join(src, "index.json")) as f:
    desc = next(m for m in json.load(f)["manifests"] if m.get("annotations", {}).get(REF) == ref)
blobs = os.path.join(dst, "blobs/sha256")
os.makedirs(blobs, exist_ok=True)
for blob in os.listdir(os.path.join(src, "blobs/sha256")):
    with open(os.path.join(src, "blobs/sha256", blob), "rb") as f:
        data = f.read()
    tmp = os.path.join(blobs, ".fake-skopeo-" + blob)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(blobs, blob))
index_path = os.path.join(dst, "index.json")
index = {"schemaVersion": 2, "manifests": []}
if os.path.exists(index_path):
    with open(index_path) as f:
        index = json.load(f)
desc = dict(desc, annotations=dict(desc.get("annotations", {}), **{REF: name}))
index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(REF) != name] + [desc]
with open(index_path + ".tmp", "w") as f:
    json.dump(index, f)
os.replace(index_path + ".tmp", index_path)
"#;

/// The description stored in the base images; also the sentinel file's
/// content, so a link to it looks like a KIWI description.
const BASE_XML: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="hostile-base">
    <description type="system"><author>A</author><contact>a@example.invalid</contact><specification>s</specification></description>
    <preferences><version>1.0.0</version><packagemanager>apt</packagemanager><type image="tbz"/></preferences>
    <repository type="apt-deb" distribution="bookworm" components="main"><source path="file:///srv/mirror"/></repository>
    <packages type="image"><package name="bash"/></packages>
    <packages type="bootstrap"><package name="usrmerge"/></packages>
</image>
"#;

/// A derived description of `from`.
fn derived_xml(from: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="hostile-child" derived_from="{from}">
    <preferences><version>2.0.0</version></preferences>
    <packages type="image"><package name="less"/></packages>
</image>
"#
    )
}

// ---------------------------------------------------------------- sandbox

/// One run's temp dir (see the module comment).
struct Sandbox {
    dir: TempDir,
}

/// What one run of the binary did.
struct Run {
    /// Which command this was, for the report.
    label: String,
    /// `None` when it was killed after [`TIMEOUT`].
    status: Option<ExitStatus>,
    stderr: Vec<u8>,
    /// Where the fakes recorded their calls.
    calls: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("hostile-inputs-")
            .tempdir()
            .expect("creating a temp dir");
        let sb = Sandbox { dir };
        for d in ["bin", "tmp", "work", "calls"] {
            fs::create_dir(sb.path(d)).unwrap();
        }
        for (name, script) in [("kiwi-ng", FAKE_KIWI), ("skopeo", FAKE_SKOPEO)] {
            let path = sb.path("bin").join(name);
            fs::write(&path, script).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let s = sb.sentinel();
        fs::create_dir_all(s.join("dir/sub")).unwrap();
        fs::write(s.join("file"), BASE_XML).unwrap();
        fs::write(s.join("dir/file"), "must stay\n").unwrap();
        fs::write(s.join("dir/sub/child"), "must stay too\n").unwrap();
        symlink("file", s.join("link")).unwrap();
        symlink("../file", s.join("dir/link")).unwrap();
        sb
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The tree outside every target that hostile links point into.
    fn sentinel(&self) -> PathBuf {
        self.path("sentinel")
    }

    /// `rel` in the sentinel, as an absolute path for a link target.
    fn sentinel_arg(&self, rel: &str) -> String {
        self.sentinel().join(rel).to_str().unwrap().to_string()
    }

    /// The user's description directory.
    fn description(&self) -> PathBuf {
        self.path("description")
    }

    /// Writes the crafted image made of `layers` into `layout/`.
    fn image(&self, layers: &[Layer]) -> String {
        write_image(&self.path("layout"), "base", layers)
    }

    /// Writes `description/config.xml`, a description derived from `base`.
    fn derived_description(&self, base: &str) {
        fs::create_dir_all(self.description()).unwrap();
        fs::write(self.description().join("config.xml"), derived_xml(base)).unwrap();
    }

    /// Snapshots of what no run may change: the sentinel, the image layout
    /// and the user's description.
    fn outside(&self) -> Vec<(&'static str, Snapshot)> {
        ["sentinel", "layout", "description"]
            .into_iter()
            .filter(|d| self.path(d).exists())
            .map(|d| (d, snapshot(&self.path(d))))
            .collect()
    }

    /// Runs the binary with `args` (and `env` on top of the sandbox's),
    /// killing it after [`TIMEOUT`].
    fn run(&self, label: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let calls = self
            .path("calls")
            .join(label.replace(|c: char| !c.is_alphanumeric(), "-"));
        fs::create_dir(&calls).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", self.path("bin"))
            .env("HOME", self.dir.path())
            .env("TMPDIR", self.path("tmp"))
            .env("KIWI_STACKBUILD_HOME", self.path("store"))
            .env("SKOPEO", self.path("bin/skopeo"))
            .env("KIWI_NG", self.path("bin/kiwi-ng"))
            .env("FAKE_ARGV_DIR", &calls)
            .env("RUST_BACKTRACE", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting kiwi-stackbuild");
        let mut pipe = child.stderr.take().unwrap();
        let reader = thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        });
        let started = Instant::now();
        let status = loop {
            match child.try_wait().expect("waiting for kiwi-stackbuild") {
                Some(status) => break Some(status),
                None if started.elapsed() > TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        Run {
            label: label.to_string(),
            status,
            stderr: reader.join().unwrap(),
            calls,
        }
    }
}

impl Run {
    /// The first line of the error report: what follows `Error:` on its
    /// line, else the next line without color-eyre's `0: `.
    fn error_line(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.stderr);
        let mut lines = text.split('\n');
        while let Some(line) = lines.next() {
            let Some(rest) = line.strip_prefix("Error:") else {
                continue;
            };
            if !rest.trim().is_empty() {
                return Some(rest.trim().to_string());
            }
            let next = lines.next()?.trim_start();
            return Some(next.strip_prefix("0:").unwrap_or(next).trim().to_string());
        }
        None
    }

    /// Every call of the fake `kiwi-ng`, each as its argv.
    fn kiwi_calls(&self) -> Vec<Vec<String>> {
        let Ok(bytes) = fs::read(self.calls.join("kiwi-ng")) else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let mut fields = text.split('\0');
        let mut calls = Vec::new();
        while let Some(count) = fields.next().filter(|c| !c.is_empty()) {
            let count: usize = count.parse().unwrap();
            calls.push((0..count).map(|_| fields.next().unwrap().to_string()).collect());
        }
        calls
    }

    /// The `kiwi-ng system ...` calls (not `--version`).
    fn builds(&self) -> Vec<Vec<String>> {
        self.kiwi_calls()
            .into_iter()
            .filter(|c| c.iter().any(|a| a == "system"))
            .collect()
    }

    /// What the fake kiwi-ng recorded with stat: `(NAME, "MODE UID GID")`.
    fn stats(&self) -> Vec<(String, String)> {
        let text = fs::read_to_string(self.calls.join("stat")).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(name, rest)| (name.to_string(), rest.to_string()))
            .collect()
    }

    /// Exit status and the stderr tail, control characters escaped.
    fn report(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => format!("killed after {} s", TIMEOUT.as_secs()),
        };
        let text = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = text.split('\n').collect();
        let tail: Vec<String> = lines[lines.len().saturating_sub(25)..]
            .iter()
            .map(|l| printable(l))
            .collect();
        let calls: Vec<String> = self.kiwi_calls().iter().map(|c| format!("{c:?}")).collect();
        format!(
            "--- {} ({status}), kiwi-ng calls: [{}], stderr:\n{}",
            self.label,
            calls.join(", "),
            tail.join("\n")
        )
    }
}

/// `text` with control characters shown as escapes.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

// ---------------------------------------------------------------- checks

/// Everything wrong with a test's runs, reported at once.
#[derive(Default)]
struct Problems {
    found: Vec<String>,
    reports: Vec<String>,
}

impl Problems {
    fn add(&mut self, run: &Run, what: impl Into<String>) {
        self.found.push(format!("{}: {}", run.label, what.into()));
        let report = run.report();
        if !self.reports.contains(&report) {
            self.reports.push(report);
        }
    }

    fn finish(self) {
        if !self.found.is_empty() {
            panic!(
                "{} problem(s):\n  {}\n\n{}",
                self.found.len(),
                self.found.join("\n  "),
                self.reports.join("\n\n")
            );
        }
    }

    /// The sentinel, the layout and the description are as `before`.
    fn unchanged(&mut self, run: &Run, sb: &Sandbox, before: &[(&str, Snapshot)]) {
        let after = sb.outside();
        for (name, snap) in before {
            let now = after
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            for diff in tree_diff(snap, &now).into_iter().take(10) {
                self.add(run, format!("changed outside the target: {name}/{diff}"));
            }
        }
    }

    /// Refused: exit status not 0, within the timeout, the error's first
    /// line naming each of `names`; stderr free of raw control characters.
    fn refused(&mut self, run: &Run, names: &[&str]) {
        self.no_raw_control_characters(run);
        match run.status {
            None => return self.add(run, format!("hangs: killed after {} s", TIMEOUT.as_secs())),
            Some(s) if s.success() => return self.add(run, "exit status 0: the hostile input was accepted"),
            Some(_) => {}
        }
        let Some(line) = run.error_line() else {
            return self.add(run, "no `Error:` on stderr");
        };
        for name in names {
            if !line.contains(name) {
                self.add(
                    run,
                    format!("the error's first line does not name {name:?}: {}", printable(&line)),
                );
            }
        }
    }

    fn succeeded(&mut self, run: &Run) {
        self.no_raw_control_characters(run);
        match run.status {
            Some(s) if s.success() => {}
            None => self.add(run, format!("hangs: killed after {} s", TIMEOUT.as_secs())),
            Some(s) => self.add(run, format!("failed ({s}), expected success")),
        }
    }

    fn no_raw_control_characters(&mut self, run: &Run) {
        if let Some(c) = run
            .stderr
            .iter()
            .find(|&&b| (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7f)
        {
            self.add(run, format!("raw control character 0x{c:02x} on stderr"));
        }
    }

    /// kiwi-ng was not asked to build anything.
    fn nothing_built(&mut self, run: &Run) {
        for call in run.builds() {
            self.add(run, format!("kiwi-ng ran anyway: {call:?}"));
        }
    }

    /// A failed rebuild into `target` left no root, no merged description
    /// and no scratch directory.
    fn rebuild_left_nothing(&mut self, run: &Run, target: &Path) {
        if run.status.is_none() {
            return; // killed: it had no chance to clean up
        }
        for rel in ["build/image-root", "build/merged-description"] {
            if target.join(rel).symlink_metadata().is_ok() {
                self.add(run, format!("left {rel} in the target dir"));
            }
        }
        for (dir, prefix) in [
            (target.to_path_buf(), ".kiwi-stackbuild-"),
            (target.join("build"), ".merged-"),
        ] {
            for name in names_in(&dir).into_iter().filter(|n| n.starts_with(prefix)) {
                self.add(run, format!("left the scratch dir {}", dir.join(name).display()));
            }
        }
    }

    /// A failed merge wrote no `--output` (nor anything beside it) and left
    /// nothing in TMPDIR.
    fn merge_left_nothing(&mut self, run: &Run, sb: &Sandbox, out: &Path) {
        if run.status.is_none() {
            return; // killed: it had no chance to clean up
        }
        if out.symlink_metadata().is_ok() {
            self.add(run, format!("wrote the --output dir {}", out.display()));
        }
        for dir in ["work", "tmp"] {
            for name in names_in(&sb.path(dir)) {
                if sb.path(dir).join(&name) != out {
                    self.add(run, format!("left {dir}/{name}"));
                }
            }
        }
    }

    /// `mode uid gid` of `file` does not give setuid or setgid to anyone
    /// but the original owner ([`NOBODY`]).
    fn no_new_setuid_owner(&mut self, run: &Run, file: &str, stat: &str) {
        let fields: Vec<&str> = stat.split_whitespace().collect();
        let [mode, uid, gid] = fields[..] else {
            return self.add(run, format!("{file}: {stat}"));
        };
        let mode = u32::from_str_radix(mode, 8).unwrap();
        let (uid, gid): (u32, u32) = (uid.parse().unwrap(), gid.parse().unwrap());
        if mode & 0o4000 != 0 && uid != NOBODY {
            self.add(run, format!("{file} is setuid (mode {mode:o}) and owned by uid {uid}"));
        }
        if mode & 0o2000 != 0 && gid != NOBODY {
            self.add(run, format!("{file} is setgid (mode {mode:o}) and owned by gid {gid}"));
        }
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------- commands

/// `merge --description description --output work/out --base BASE`.
fn merge(sb: &Sandbox, base: &str) -> (Run, PathBuf) {
    let out = sb.path("work/out");
    let desc = sb.description();
    let args = [
        "merge",
        "--description",
        desc.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--base",
        base,
    ];
    (sb.run("merge", &args, &[]), out)
}

/// W4: `rebuild --description description -- --target-dir target`.
fn w4(sb: &Sandbox, env: &[(&str, &str)]) -> (Run, PathBuf) {
    let target = sb.path("target");
    let desc = sb.description();
    let args = [
        "rebuild",
        "--description",
        desc.to_str().unwrap(),
        "--",
        "--target-dir",
        target.to_str().unwrap(),
    ];
    (sb.run("W4 rebuild", &args, env), target)
}

/// W2: `rebuild --root ROOT -- --target-dir target`.
fn w2(sb: &Sandbox, root: &str) -> (Run, PathBuf) {
    let target = sb.path("target");
    let args = [
        "rebuild",
        "--root",
        root,
        "--",
        "--target-dir",
        target.to_str().unwrap(),
    ];
    (sb.run("W2 rebuild", &args, &[]), target)
}

/// W3: `rebuild --root ROOT -- --description description --target-dir target`.
fn w3(sb: &Sandbox, root: &str, env: &[(&str, &str)]) -> (Run, PathBuf) {
    let target = sb.path("target");
    let desc = sb.description();
    let args = [
        "rebuild",
        "--root",
        root,
        "--",
        "--description",
        desc.to_str().unwrap(),
        "--target-dir",
        target.to_str().unwrap(),
    ];
    (sb.run("W3 rebuild", &args, env), target)
}

/// A KIWI root's layer: `image/config.xml`, then what `extra` adds.
fn kiwi_layer(extra: impl FnOnce(&mut Tar)) -> Vec<u8> {
    let mut t = Tar::new();
    t.dir("etc");
    t.file("etc/os-release", b"ID=debian\n");
    t.dir("image");
    t.file("image/config.xml", BASE_XML.as_bytes());
    extra(&mut t);
    t.finish()
}

/// A plain container image (no /image), for W3.
fn plain_image(sb: &Sandbox) -> String {
    let mut t = Tar::new();
    t.dir("etc");
    t.file("etc/os-release", b"ID=debian\n");
    sb.image(&[Layer::gzip(&t.finish())])
}

/// What a correct tool may do with an input.
#[derive(Clone, Copy)]
enum Expect<'a> {
    /// Refuse it, the error's first line naming each of these.
    Refusal(&'a [&'a str]),
    /// Refuse it as above, or use it harmlessly (confined to the root).
    RefusalOrHarmless(&'a [&'a str]),
}

/// Runs `merge --base` and W4 (each in a fresh sandbox) on the base image
/// whose one layer `layer` writes (given the sandbox), and checks `expect`,
/// that nothing outside changed and that a refusal leaves nothing behind.
fn check_base_image(layer: impl Fn(&Sandbox) -> Vec<u8>, expect: Expect) {
    let mut p = Problems::default();
    for merging in [true, false] {
        let sb = Sandbox::new();
        let base = sb.image(&[Layer::gzip(&layer(&sb))]);
        sb.derived_description(&base);
        let before = sb.outside();
        let (run, place) = if merging { merge(&sb, &base) } else { w4(&sb, &[]) };
        p.unchanged(&run, &sb, &before);
        let names = match expect {
            Expect::RefusalOrHarmless(_) if run.status.is_some_and(|s| s.success()) => {
                if merging && !place.join("config.xml").is_file() {
                    p.add(&run, "succeeded without writing OUT/config.xml");
                }
                if !merging && run.builds().is_empty() {
                    p.add(&run, "succeeded without running kiwi-ng");
                }
                continue;
            }
            Expect::Refusal(names) | Expect::RefusalOrHarmless(names) => names,
        };
        p.refused(&run, names);
        if merging {
            p.merge_left_nothing(&run, &sb, &place);
        } else {
            p.nothing_built(&run);
            p.rebuild_left_nothing(&run, &place);
        }
    }
    p.finish();
}

/// Runs W2 and `merge --base` (each in a fresh sandbox) on the image made
/// of `layer`, and checks that both refuse it naming each of `names`, with
/// nothing outside changed and nothing left behind.
fn check_root_image(label: &str, layer: &Layer, names: &[&str], p: &mut Problems) {
    for merging in [true, false] {
        let sb = Sandbox::new();
        let base = sb.image(std::slice::from_ref(layer));
        sb.derived_description(&base);
        let before = sb.outside();
        let (mut run, place) = if merging { merge(&sb, &base) } else { w2(&sb, &base) };
        run.label = format!("{} ({label})", run.label);
        p.unchanged(&run, &sb, &before);
        p.refused(&run, names);
        if merging {
            p.merge_left_nothing(&run, &sb, &place);
        } else {
            p.nothing_built(&run);
            p.rebuild_left_nothing(&run, &place);
        }
    }
}

/// A script at `path`, owned by nobody, setuid and setgid (mode 06755).
fn setuid_file(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, "#!/bin/sh\nid\n").unwrap();
    lchown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o6755)).unwrap();
}

/// A setuid/setgid file owned by nobody in the image's /image overlay.
fn setuid_entry(t: &mut Tar, path: &str) {
    t.entry(&Entry {
        mode: 0o6755,
        owner: (NOBODY, NOBODY),
        data: b"#!/bin/sh\nid\n",
        ..Entry::new(path.as_bytes(), Type::File)
    });
}

/// Root-owned directories `dirs`, in order.
fn dirs(t: &mut Tar, dirs: &[&str]) {
    for d in dirs {
        t.dir(d);
    }
}

// ---------------------------------------------------------------- 1. whiteouts and links in the base's /image

/// A whiteout below a symlink to a host directory removes nothing there.
#[test]
fn whiteout_through_a_symlink_in_the_base_image_stays_inside() {
    check_base_image(
        |sb| {
            kiwi_layer(|t| {
                t.symlink("image/evil", &sb.sentinel_arg("dir"));
                t.file("image/evil/.wh.file", b"");
            })
        },
        Expect::Refusal(&["evil"]),
    );
}

/// A whiteout whose name climbs out with `..` removes nothing outside (it
/// may be refused, or taken as the in-root path it cleans to).
#[test]
fn whiteout_with_dot_dot_in_the_base_image_stays_inside() {
    // From TMPDIR/.tmpXXXX/base/image (merge) and from
    // target/build/image-root/image (W4), four levels up is the sandbox.
    check_base_image(
        |_| kiwi_layer(|t| t.file("image/../../../../sentinel/dir/.wh.file", b"")),
        Expect::RefusalOrHarmless(&[".wh.file"]),
    );
}

/// Opaque markers below a symlink to a host directory clear nothing there.
#[test]
fn opaque_marker_under_a_symlink_in_the_base_image_stays_inside() {
    check_base_image(
        |sb| {
            kiwi_layer(|t| {
                t.symlink("image/evil", &sb.sentinel_arg("dir"));
                t.file("image/evil/sub/.wh..wh..opq", b"");
                t.file("image/evil/.wh..wh..opq", b"");
            })
        },
        Expect::Refusal(&["evil"]),
    );
}

/// A file below a symlink to a host directory is not written there.
#[test]
fn file_under_a_symlink_in_the_base_image_stays_inside() {
    check_base_image(
        |sb| {
            kiwi_layer(|t| {
                t.symlink("image/evil", &sb.sentinel_arg("dir"));
                t.file("image/evil/planted", b"planted by the image\n");
            })
        },
        Expect::Refusal(&["evil"]),
    );
}

// ---------------------------------------------------------------- 2. blobs that lie

/// A layer blob with this many bytes after the tar's end marker: more than
/// the unpacker reads ahead, so only a check over the whole blob sees them.
const TRAILING: usize = 8 << 20;

fn trailing_tar() -> (Vec<u8>, Vec<u8>) {
    let tar = kiwi_layer(|_| {});
    let mut longer = tar.clone();
    longer.extend(b"trailing data after the end marker ".iter().cycle().take(TRAILING));
    (tar, longer)
}

/// Data after the tar end marker, the manifest keeping the original blob's
/// digest (size and diff_id match the blob as it is).
#[test]
fn trailing_data_under_the_original_blob_digest_is_refused() {
    let (tar, longer) = trailing_tar();
    let blob = gzip(&longer);
    let layer = Layer {
        digest: sha256(&gzip(&tar)),
        size: blob.len() as u64,
        diff_id: sha256(&longer),
        blob,
    };
    let mut p = Problems::default();
    check_root_image("blob digest wrong", &layer, &[&digest_prefix(&layer.digest)], &mut p);
    p.finish();
}

/// Data after the tar end marker, the blob's digest right, the config
/// keeping the original tar's diff_id.
#[test]
fn trailing_data_under_the_original_diff_id_is_refused() {
    let (tar, longer) = trailing_tar();
    let layer = Layer {
        diff_id: sha256(&tar),
        ..Layer::gzip(&longer)
    };
    let mut p = Problems::default();
    check_root_image("diff_id wrong", &layer, &[&digest_prefix(&layer.digest)], &mut p);
    p.finish();
}

/// A blob one byte longer, or one byte shorter, than its descriptor says.
#[test]
fn blob_size_unlike_its_descriptor_is_refused() {
    let good = Layer::gzip(&kiwi_layer(|_| {}));
    let mut p = Problems::default();
    for (label, size) in [("blob longer", good.size - 1), ("blob shorter", good.size + 1)] {
        let layer = Layer { size, ..good.clone() };
        check_root_image(label, &layer, &[&digest_prefix(&layer.digest)], &mut p);
    }
    p.finish();
}

/// The digest as far as a message must show it: `sha256:` and 12 hex digits.
fn digest_prefix(digest: &str) -> String {
    digest[..7 + 12].to_string()
}

// ---------------------------------------------------------------- 3. setuid files in copies

/// W3 copies the description for kiwi-ng: its setuid file must not become
/// root's, and the copy lies in a directory only root can enter.
#[test]
fn setuid_file_in_a_w3_description_is_not_handed_to_root() {
    let sb = Sandbox::new();
    let root = plain_image(&sb);
    fs::create_dir_all(sb.description()).unwrap();
    fs::write(sb.description().join("config.xml"), BASE_XML).unwrap();
    setuid_file(&sb.description().join("root/usr/bin/su-copy"));
    let before = sb.outside();
    let (run, _) = w3(&sb, &root, &[("FAKE_KIWI_STAT", "root/usr/bin/su-copy")]);
    let mut p = Problems::default();
    p.unchanged(&run, &sb, &before);
    p.succeeded(&run);
    if run.builds().is_empty() {
        p.add(&run, "kiwi-ng was not run");
    }
    let stats = run.stats();
    let stat_of = |name: &str| stats.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone());
    let private = ["DESCRIPTION", "PARENT"].iter().any(|d| {
        stat_of(d).is_some_and(|s| u32::from_str_radix(s.split(' ').next().unwrap(), 8).unwrap() & 0o077 == 0)
    });
    if !private {
        p.add(
            &run,
            format!(
                "the copy handed to kiwi-ng, or the scratch dir holding it, is not mode 0700: {:?} {:?}",
                stat_of("DESCRIPTION"),
                stat_of("PARENT")
            ),
        );
    }
    match stat_of("root/usr/bin/su-copy") {
        Some(s) => p.no_new_setuid_owner(&run, "the copy of root/usr/bin/su-copy", &s),
        None if !run.builds().is_empty() => p.add(&run, "kiwi-ng recorded no stat"),
        None => {}
    }
    p.finish();
}

/// The base image's /image and the derived description, both with a setuid
/// file owned by nobody.
fn setuid_base_and_derived(sb: &Sandbox) -> String {
    let base = sb.image(&[Layer::gzip(&kiwi_layer(|t| {
        dirs(t, &["image/root", "image/root/usr", "image/root/usr/bin"]);
        setuid_entry(t, "image/root/usr/bin/su-base");
    }))]);
    sb.derived_description(&base);
    setuid_file(&sb.description().join("root/usr/bin/su-copy"));
    base
}

const SETUID_FILES: [&str; 2] = ["root/usr/bin/su-copy", "root/usr/bin/su-base"];

/// W4 merges both into the description for kiwi-ng: neither setuid file may
/// become root's.
#[test]
fn setuid_files_in_a_w4_merge_are_not_handed_to_root() {
    let sb = Sandbox::new();
    setuid_base_and_derived(&sb);
    let before = sb.outside();
    let (run, _) = w4(&sb, &[("FAKE_KIWI_STAT", &SETUID_FILES.join(" "))]);
    let mut p = Problems::default();
    p.unchanged(&run, &sb, &before);
    p.succeeded(&run);
    if run.builds().is_empty() {
        p.add(&run, "kiwi-ng was not run");
    }
    let stats = run.stats();
    for file in SETUID_FILES {
        match stats.iter().find(|(n, _)| n == file) {
            Some((_, s)) if s == "missing" => p.add(&run, format!("{file} is not in the merged description")),
            Some((_, s)) => p.no_new_setuid_owner(&run, &format!("the merged {file}"), s),
            None if !run.builds().is_empty() => p.add(&run, "kiwi-ng recorded no stat"),
            None => {}
        }
    }
    p.finish();
}

/// `merge` writes both into OUT: neither setuid file may become root's.
#[test]
fn setuid_files_in_merge_output_are_not_handed_to_root() {
    let sb = Sandbox::new();
    let base = setuid_base_and_derived(&sb);
    let before = sb.outside();
    let (run, out) = merge(&sb, &base);
    let mut p = Problems::default();
    p.unchanged(&run, &sb, &before);
    p.succeeded(&run);
    if run.status.is_some_and(|s| s.success()) {
        for file in SETUID_FILES {
            match fs::symlink_metadata(out.join(file)) {
                Ok(m) => p.no_new_setuid_owner(
                    &run,
                    &format!("OUT/{file}"),
                    &format!("{:o} {} {}", m.mode() & 0o7777, m.uid(), m.gid()),
                ),
                Err(e) => p.add(&run, format!("OUT/{file}: {e}")),
            }
        }
    }
    p.finish();
}

// ---------------------------------------------------------------- 4. fifos and devices

/// A fifo in a W3 description is refused before anything is unpacked (and
/// is never opened: that would hang).
#[test]
fn fifo_in_a_w3_description_is_refused() {
    let sb = Sandbox::new();
    let root = plain_image(&sb);
    fs::create_dir_all(sb.description().join("root/etc")).unwrap();
    fs::write(sb.description().join("config.xml"), BASE_XML).unwrap();
    let fifo = sb.description().join("root/etc/pipe-in-description");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo {}", fifo.display());
    let before = sb.outside();
    let (run, target) = w3(&sb, &root, &[]);
    let mut p = Problems::default();
    p.unchanged(&run, &sb, &before);
    p.refused(&run, &["pipe-in-description"]);
    p.nothing_built(&run);
    p.rebuild_left_nothing(&run, &target);
    p.finish();
}

/// A fifo in the base image's /image is refused by W4 and merge.
#[test]
fn fifo_in_the_base_image_is_refused() {
    check_base_image(
        |_| {
            kiwi_layer(|t| {
                dirs(t, &["image/root", "image/root/etc"]);
                t.entry(&Entry::new(b"image/root/etc/pipe-in-base", Type::Fifo));
            })
        },
        Expect::Refusal(&["pipe-in-base"]),
    );
}

/// A character device in the base image's /image is refused by W4 and
/// merge. (1:3 is /dev/null: harmless should a copy read it.)
#[test]
fn char_device_in_the_base_image_is_refused() {
    check_base_image(
        |_| {
            kiwi_layer(|t| {
                dirs(t, &["image/root", "image/root/dev"]);
                t.entry(&Entry {
                    device: (1, 3),
                    ..Entry::new(b"image/root/dev/char-in-base", Type::Char)
                });
            })
        },
        Expect::Refusal(&["char-in-base"]),
    );
}

// ---------------------------------------------------------------- 5. symlinks out of the base's /image

/// An absolute symlink in the base's /image (`etc/passwd -> /etc/passwd`,
/// here aimed at the sentinel) is refused by W4 and merge.
#[test]
fn absolute_symlink_out_of_the_base_image_description_is_refused() {
    check_base_image(
        |sb| {
            kiwi_layer(|t| {
                dirs(t, &["image/root", "image/root/etc"]);
                t.symlink("image/root/etc/passwd", &sb.sentinel_arg("file"));
            })
        },
        Expect::Refusal(&["passwd"]),
    );
}

/// A relative symlink climbing out of the base's /image is refused by W4
/// and merge.
#[test]
fn relative_symlink_out_of_the_base_image_description_is_refused() {
    check_base_image(
        |_| kiwi_layer(|t| t.symlink("image/up-and-out", "../../etc")),
        Expect::Refusal(&["up-and-out"]),
    );
}

// ---------------------------------------------------------------- 6. W2 and a config.xml link

/// W2 on an image whose /image/config.xml links to a host file (with valid
/// KIWI XML): not followed onto the host, so the image is no KIWI root.
#[test]
fn w2_does_not_follow_config_xml_onto_the_host() {
    let sb = Sandbox::new();
    let mut t = Tar::new();
    t.dir("etc");
    t.file("etc/os-release", b"ID=debian\n");
    t.dir("image");
    t.symlink("image/config.xml", &sb.sentinel_arg("file"));
    let root = sb.image(&[Layer::gzip(&t.finish())]);
    let before = sb.outside();
    let (run, target) = w2(&sb, &root);
    let mut p = Problems::default();
    p.unchanged(&run, &sb, &before);
    p.refused(&run, &[]);
    if let Some(line) = run.error_line().filter(|_| run.status.is_some_and(|s| !s.success())) {
        if !line.contains("config.xml") && !line.contains("KIWI root") {
            p.add(
                &run,
                format!("the error does not say it is no KIWI root: {}", printable(&line)),
            );
        }
    }
    p.nothing_built(&run);
    p.rebuild_left_nothing(&run, &target);
    p.finish();
}

// ---------------------------------------------------------------- 7. control characters in names

/// An entry whose name holds ESC and a newline, failing (a hard link to
/// nothing): the error names it escaped, on one line.
#[test]
fn control_characters_in_a_failing_entry_name_are_escaped() {
    let name: &[u8] = b"image/evil\x1b[31mname\nforged line";
    let layer = Layer::gzip(&kiwi_layer(|t| {
        t.entry(&Entry {
            link: b"image/missing-target",
            ..Entry::new(name, Type::HardLink)
        })
    }));
    let mut p = Problems::default();
    // A raw newline would put "forged line" on a line of its own, not on
    // the error's first line.
    check_root_image("hard link to nothing", &layer, &["evil", "forged line"], &mut p);
    p.finish();
}
