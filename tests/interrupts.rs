//! Interrupted runs: SIGINT, SIGTERM and SIGHUP at the points where push,
//! pull, stash and rebuild wait for a child, and `kill -9` during an unpack.
//!
//! The fake tools (as in cli_fake_tools.rs: shell scripts named by SKOPEO,
//! UMOCI, KIWI_NG) block where `$FAKE_BLOCK` says: they write their pid to
//! `$FAKE_DIR/WHAT.pid` and `exec sleep`, so the test signals us only once
//! the child runs, and the pid is the child's for its whole life. Real
//! skopeo is wrapped the same way against the TLS registry of
//! tests/common/registry.rs.
//!
//! After every interrupt: the exit status is the signal; the child is gone;
//! no file under the run's TMPDIR or the store holds the password; the
//! scratch dirs and a half-unpacked root are gone; the next run works.
//!
//! Needs root, as `stash` and `rebuild` do.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::registry::{Login, Registry};
use rustix::process::{Pid, Signal};

const BIN: &str = env!("CARGO_BIN_EXE_kiwi-stackbuild");
const PASSWORD: &str = "s3cret-Pa55word";

/// How long a child may take to start or to be gone.
const PATIENCE: Duration = Duration::from_secs(20);

/// Shared by the fakes: `block WHAT` writes the pid and sleeps when
/// `$FAKE_BLOCK` is WHAT; the pid file appears whole (renamed into place).
const BLOCK: &str = r#"
block() {
    if [ "$FAKE_BLOCK" = "$1" ]; then
        echo $$ > "$FAKE_DIR/$1.pid.tmp" && mv "$FAKE_DIR/$1.pid.tmp" "$FAKE_DIR/$1.pid"
        exec sleep 1000
    fi
}
"#;

/// skopeo: `inspect` prints a manifest no store has; `copy` notes the auth
/// file it was given and its modes, half-writes into an `oci:` destination,
/// then blocks (`copy`) or succeeds.
const FAKE_SKOPEO: &str = r#"
prev= dest= auth=
for a; do
    case $prev in --src-authfile|--dest-authfile|--authfile) auth=$a ;; esac
    prev=$a dest=$a
done
if [ -n "$auth" ]; then
    stat -c '%a' "$(dirname "$auth")" "$auth" > "$FAKE_DIR/auth-modes"
fi
case $1 in
inspect)
    block inspect
    echo '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}'
    ;;
copy)
    case $dest in oci:*)
        dir=${dest#oci:}; dir=${dir%%:*}
        mkdir -p "$dir/blobs/sha256" && echo half > "$dir/blobs/sha256/half-written"
    esac
    block copy
    ;;
esac
exit 0
"#;

/// umoci: `raw unpack` half-fills its rootfs, then blocks (`unpack`) or
/// fills it from `$FAKE_UMOCI_SEED`.
const FAKE_UMOCI: &str = r#"
for a; do rootfs=$a; done
mkdir -p "$rootfs/usr" && echo half > "$rootfs/usr/half-unpacked"
block unpack
rm "$rootfs/usr/half-unpacked"
cp -a "$FAKE_UMOCI_SEED/." "$rootfs/"
"#;

/// kiwi-ng: `--version` blocks (`version`) or prints one; a build or create
/// blocks (`kiwi`: noting in `kiwi-got` the signal that stops it, as kiwi-ng
/// cleans up on SIGINT only) or succeeds.
const FAKE_KIWI: &str = r#"
# Asked for its options: it has none to list (the built-in list applies).
case " $* " in *" --help "*) exit 0 ;; esac
if [ "$1" = --version ]; then
    block version
    echo "KIWI (next generation) version 9.9.9"
    exit 0
fi
if [ "$FAKE_BLOCK" = kiwi ]; then
    trap 'echo INT > "$FAKE_DIR/kiwi-got"; exit 130' INT
    trap 'echo TERM > "$FAKE_DIR/kiwi-got"; exit 143' TERM
    echo $$ > "$FAKE_DIR/kiwi.pid.tmp" && mv "$FAKE_DIR/kiwi.pid.tmp" "$FAKE_DIR/kiwi.pid"
    while :; do sleep 0.05; done
fi
"#;

/// One test's directory: fakes in `bin/`, the store, the TMPDIR of runs.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::Builder::new().prefix("interrupts-").tempdir().unwrap();
        let s = Sandbox { dir };
        for d in ["bin", "tmp", "fake"] {
            fs::create_dir(s.path(d)).unwrap();
        }
        for (name, body) in [("skopeo", FAKE_SKOPEO), ("umoci", FAKE_UMOCI), ("kiwi-ng", FAKE_KIWI)] {
            write_script(
                &s.path("bin").join(name),
                &format!("#!/bin/sh\nPATH=/usr/bin:/bin\n{BLOCK}{body}"),
            );
        }
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn arg(&self, rel: &str) -> String {
        self.path(rel).to_str().unwrap().to_string()
    }

    /// The binary with the fakes, the store, TMPDIR in the sandbox, and
    /// `block` as the point where a fake blocks ("" for none).
    fn cmd<S: AsRef<OsStr>>(&self, args: &[S], block: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.dir.path())
            .env("TMPDIR", self.path("tmp"))
            .env("KIWI_STACKBUILD_HOME", self.path("store"))
            .env("KIWI_STACKBUILD_UNPACKER", "umoci")
            .env("SKOPEO", self.path("bin/skopeo"))
            .env("UMOCI", self.path("bin/umoci"))
            .env("KIWI_NG", self.path("bin/kiwi-ng"))
            .env("FAKE_DIR", self.path("fake"))
            .env("FAKE_UMOCI_SEED", self.path("seed"))
            .env("FAKE_BLOCK", block)
            .stdin(Stdio::null());
        cmd
    }

    fn ok<S: AsRef<OsStr> + std::fmt::Debug>(&self, args: &[S]) -> Output {
        let out = self.cmd(args, "").output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A stash `x:1` of a small KIWI root, which is also umoci's seed.
    fn with_stash(&self) {
        let seed = self.path("seed");
        for d in ["etc", "usr/bin", "image"] {
            fs::create_dir_all(seed.join(d)).unwrap();
        }
        fs::write(seed.join("image/config.xml"), CONFIG_XML).unwrap();
        fs::write(seed.join("etc/os-release"), "NAME=fake\n").unwrap();
        self.ok(&[
            "stash",
            "--root",
            &self.arg("seed"),
            "--container-name",
            "x",
            "--tag",
            "1",
        ]);
    }
}

const CONFIG_XML: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="x">
    <description type="system"><author>A</author><contact>a@b</contact><specification>s</specification></description>
    <preferences><version>1.2.3</version><packagemanager>apt</packagemanager><type image="tbz"/></preferences>
</image>
"#;

fn write_script(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Waits for `file` to appear and returns the pid it holds, while `child`
/// runs (its output is in the panic message if it ends first).
fn wait_for_pid(file: &Path, child: &mut Child) -> i32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = fs::read_to_string(file) {
            return text.trim().parse().unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the run ended ({status}) before {} appeared:\n{err}", file.display());
        }
        assert!(Instant::now() < deadline, "{} did not appear", file.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, sig: Signal) {
    rustix::process::kill_process(Pid::from_child(child), sig).unwrap();
}

/// Whether `pid` is a process that has not ended (a zombie has).
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// Asserts that `pid` ends soon (an orphan is reaped by init, not us).
fn assert_gone(pid: i32, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while alive(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) is still running");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `cmd`, waits until the fake blocked at `block` runs, sends `sig`
/// and returns the run's status and stderr, and the blocked child's pid.
fn interrupt(sandbox: &Sandbox, mut cmd: Command, block: &str, sig: Signal) -> (ExitStatus, String, i32) {
    let pid_file = sandbox.path(&format!("fake/{block}.pid"));
    let _ = fs::remove_file(&pid_file);
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = wait_for_pid(&pid_file, &mut child);
    signal(&child, sig);
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned(), pid)
}

fn assert_killed_by(status: ExitStatus, sig: Signal, stderr: &str) {
    assert_eq!(
        status.signal(),
        Some(sig.as_raw()),
        "expected death by signal {}, got {status}:\n{stderr}",
        sig.as_raw()
    );
}

/// Every file below `dir` whose content holds one of `secrets`.
fn files_holding(dir: &Path, secrets: &[String]) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            let bytes = fs::read(e.path()).unwrap_or_default();
            secrets
                .iter()
                .any(|s| bytes.windows(s.len()).any(|w| w == s.as_bytes()))
        })
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// The password and the base64 token an auth file would hold.
fn secret_forms(user: &str, password: &str) -> Vec<String> {
    let creds = kiwi_stackbuild::registry::Credentials::parse(&format!("{user}:{password}"), None).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&kiwi_stackbuild::registry::auth_json(&creds, &["h".into()])).unwrap();
    vec![
        password.to_string(),
        json["auths"]["h"]["auth"].as_str().unwrap().to_string(),
    ]
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|e| {
            e.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// What no interrupted run may leave: the password in a file of TMPDIR or
/// the store, anything at all in TMPDIR, a staging area or temp file in the
/// store or its cache of trees.
fn assert_nothing_left(sandbox: &Sandbox, secrets: &[String], what: &str) {
    for dir in ["tmp", "store"] {
        let leaks = files_holding(&sandbox.path(dir), secrets);
        assert!(leaks.is_empty(), "{what}: the password is in {leaks:?}");
    }
    assert_eq!(names_in(&sandbox.path("tmp")), Vec::<String>::new(), "{what}: TMPDIR");
    // The store's own temp files, and those of its cache of trees.
    for dir in ["store", "store/.kiwi-stackbuild-trees"] {
        let staging: Vec<String> = names_in(&sandbox.path(dir))
            .into_iter()
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(staging.is_empty(), "{what}: {dir} keeps {staging:?}");
    }
}

const SIGNALS: [Signal; 3] = [Signal::INT, Signal::TERM, Signal::HUP];

/// `--creds u --password-stdin`, the password on stdin.
fn with_password(mut cmd: Command, sandbox: &Sandbox) -> Command {
    let file = sandbox.path("password");
    fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    cmd.stdin(fs::File::open(file).unwrap());
    cmd
}

/// Interrupts `cmd` with `sig` once skopeo blocks at `block`, and asserts
/// what an interrupted push or pull must leave: death by that signal,
/// skopeo waited for, no secret or staging left, the index as it was.
fn interrupted_cleanly(
    s: &Sandbox,
    cmd: Command,
    block: &str,
    sig: Signal,
    secrets: &[String],
    index: &[u8],
    what: &str,
) {
    let (status, stderr, pid) = interrupt(s, cmd, block, sig);
    assert_killed_by(status, sig, &stderr);
    assert!(!alive(pid), "{what}: skopeo was not waited for");
    assert_nothing_left(s, secrets, what);
    assert_eq!(
        fs::read(s.path("store/index.json")).unwrap(),
        index,
        "{what}: the store changed"
    );
}

#[test]
fn push_interrupted_by_each_signal_ends_skopeo_and_leaves_no_password() {
    let s = Sandbox::new();
    s.with_stash();
    let secrets = secret_forms("u", PASSWORD);
    let index = fs::read(s.path("store/index.json")).unwrap();
    for (sig, format) in SIGNALS.into_iter().zip(["zstd", "gzip", "zstd"]) {
        let what = format!("push, signal {}, {format}", sig.as_raw());
        let args = [
            "--creds",
            "u",
            "--password-stdin",
            "--compress-format",
            format,
            "push",
            "x:1",
            "docker://127.0.0.1:1/ns/x:1",
        ];
        let cmd = with_password(s.cmd(&args, "copy"), &s);
        interrupted_cleanly(&s, cmd, "copy", sig, &secrets, &index, &what);
        let out = with_password(s.cmd(&args, ""), &s).output().unwrap();
        assert!(
            out.status.success(),
            "{what}: the next push failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let modes = s.path("fake/auth-modes");
        assert_eq!(
            fs::read_to_string(&modes).unwrap(),
            "700\n600\n",
            "{what}: credentials dir, auth file"
        );
        fs::remove_file(modes).unwrap();
        assert_nothing_left(&s, &secrets, &format!("{what}, the next run"));
    }
}

#[test]
fn pull_interrupted_by_each_signal_leaves_no_staging_and_no_password() {
    let s = Sandbox::new();
    s.with_stash();
    let secrets = secret_forms("u", PASSWORD);
    let index = fs::read(s.path("store/index.json")).unwrap();
    for (sig, block) in SIGNALS.into_iter().zip(["copy", "inspect", "copy"]) {
        let what = format!("pull, signal {} during {block}", sig.as_raw());
        let args = [
            "--creds",
            "u",
            "--password-stdin",
            "pull",
            "docker://127.0.0.1:1/ns/y:1",
            "y:1",
        ];
        let cmd = with_password(s.cmd(&args, block), &s);
        interrupted_cleanly(&s, cmd, block, sig, &secrets, &index, &what);
        // The store is usable: the lock went with the process.
        s.ok(&["stash", "--list"]);
    }
}

#[test]
fn rebuild_interrupted_while_fetching_into_the_store_leaves_no_staging_and_no_password() {
    let s = Sandbox::new();
    s.with_stash();
    let secrets = secret_forms("u", PASSWORD);
    let index = fs::read(s.path("store/index.json")).unwrap();
    for sig in SIGNALS {
        let what = format!("rebuild from a registry, signal {} during copy", sig.as_raw());
        let target = s.arg("t-fetch");
        let args = [
            "--creds",
            "u",
            "--password-stdin",
            "rebuild",
            "--root",
            "docker://127.0.0.1:1/ns/y:1",
            "--",
            "--target-dir",
            &target,
        ];
        let cmd = with_password(s.cmd(&args, "copy"), &s);
        interrupted_cleanly(&s, cmd, "copy", sig, &secrets, &index, &what);
        let left = names_in(Path::new(&target));
        assert!(
            left.iter().all(|n| !n.starts_with(".kiwi-stackbuild-") && n != "build"),
            "{what}: the target keeps {left:?}"
        );
    }
}

#[test]
fn stash_interrupted_by_each_signal_adds_nothing_and_the_next_stash_works() {
    let s = Sandbox::new();
    s.with_stash();
    for sig in SIGNALS {
        let index = fs::read(s.path("store/index.json")).unwrap();
        let args = ["stash", "--root", &s.arg("seed"), "--container-name", "y"];
        let (status, stderr, pid) = interrupt(&s, s.cmd(&args, "version"), "version", sig);
        assert_killed_by(status, sig, &stderr);
        assert!(!alive(pid), "kiwi-ng --version was not waited for");
        assert_nothing_left(&s, &[], "stash");
        assert_eq!(
            fs::read(s.path("store/index.json")).unwrap(),
            index,
            "the store changed"
        );
    }
    let out = s.ok(&["stash", "--root", &s.arg("seed"), "--container-name", "y"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "y:latest");
}

/// While the layer is written (the run's own code, no child): signalled
/// once the layer's temp file is in the store.
#[test]
fn stash_interrupted_while_writing_its_layer_leaves_no_temp_file() {
    let s = Sandbox::new();
    big_stash(&s);
    let blobs = s.path("store/blobs/sha256");
    let temp_files = || -> Vec<String> { names_in(&blobs).into_iter().filter(|n| n.starts_with(".tmp")).collect() };
    for sig in SIGNALS {
        let index = fs::read(s.path("store/index.json")).unwrap();
        // A new name: the whole tree is written again.
        let args = ["stash", "--root", &s.arg("big"), "--container-name", "other"];
        let mut child = s
            .cmd(&args, "")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        while temp_files().is_empty() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the stash ended before its layer was written"
            );
            assert!(Instant::now() < deadline, "no layer was written");
            std::thread::sleep(Duration::from_millis(1));
        }
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        assert_killed_by(out.status, sig, &String::from_utf8_lossy(&out.stderr));
        assert_eq!(temp_files(), Vec::<String>::new());
        assert_nothing_left(&s, &[], "stash");
        assert_eq!(
            fs::read(s.path("store/index.json")).unwrap(),
            index,
            "the store changed"
        );
    }
    s.ok(&["stash", "--root", &s.arg("big"), "--container-name", "other"]);
}

#[test]
fn rebuild_interrupted_during_the_unpack_removes_the_half_root_and_runs_again() {
    let s = Sandbox::new();
    s.with_stash();
    for (n, sig) in SIGNALS.into_iter().enumerate() {
        let target = s.arg(&format!("t{n}"));
        let args = ["rebuild", "--root", "x:1", "--", "--target-dir", &target];
        let (status, stderr, pid) = interrupt(&s, s.cmd(&args, "unpack"), "unpack", sig);
        assert_killed_by(status, sig, &stderr);
        assert!(!alive(pid), "umoci was not waited for");
        assert_eq!(names_in(&s.path(&format!("t{n}"))), ["build"], "no scratch dir is left");
        assert_eq!(
            names_in(&s.path(&format!("t{n}/build"))),
            Vec::<String>::new(),
            "no root, no marker"
        );
        assert_nothing_left(&s, &[], "rebuild");
        s.ok(&args);
        assert!(s.path(&format!("t{n}/build/image-root/image/config.xml")).is_file());
    }
}

/// The built-in unpacker runs no child: the run is signalled once the
/// marker it writes before unpacking is there, while our own code writes
/// the root, which the interrupt removes under it.
#[test]
fn rebuild_interrupted_in_the_builtin_unpacker_removes_the_half_root() {
    let s = Sandbox::new();
    big_stash(&s);
    for (n, sig) in SIGNALS.into_iter().enumerate() {
        let t = s.path(&format!("t{n}"));
        let target = s.arg(&format!("t{n}"));
        let args = ["rebuild", "--root", "big:1", "--", "--target-dir", &target];
        let mut cmd = s.cmd(&args, "");
        cmd.env("KIWI_STACKBUILD_UNPACKER", "builtin");
        let marker = t.join("build/.kiwi-stackbuild-incomplete");
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let deadline = Instant::now() + PATIENCE;
        while !marker.exists() {
            assert!(child.try_wait().unwrap().is_none(), "the run ended before the unpack");
            assert!(Instant::now() < deadline, "no unpack started");
            std::thread::sleep(Duration::from_millis(1));
        }
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_killed_by(out.status, sig, &stderr);
        assert_eq!(names_in(&t), ["build"], "no scratch dir is left");
        assert_eq!(
            names_in(&t.join("build")),
            Vec::<String>::new(),
            "no root, no marker:\n{stderr}"
        );
    }
}

#[test]
fn rebuild_interrupted_in_kiwi_ng_stops_it_with_sigint_and_leaves_its_root_to_it() {
    let s = Sandbox::new();
    s.with_stash();
    for (n, sig) in [Signal::TERM, Signal::KILL].into_iter().enumerate() {
        let target = s.arg(&format!("t{n}"));
        let args = ["rebuild", "--root", "x:1", "--", "--target-dir", &target];
        let (status, stderr, pid) = interrupt(&s, s.cmd(&args, "kiwi"), "kiwi", sig);
        assert_killed_by(status, sig, &stderr);
        assert_gone(pid, "kiwi-ng");
        // SIGINT is what kiwi-ng cleans up its mounts on, also when we die
        // by kill -9 (PR_SET_PDEATHSIG).
        let got = s.path("fake/kiwi-got");
        assert_eq!(fs::read_to_string(&got).unwrap(), "INT\n", "signal {}", sig.as_raw());
        fs::remove_file(got).unwrap();
        if sig == Signal::KILL {
            continue;
        }
        // The unpack was complete: the root is kiwi-ng's now, and not marked.
        assert_eq!(names_in(&s.path(&format!("t{n}"))), ["build"]);
        assert_eq!(names_in(&s.path(&format!("t{n}/build"))), ["image-root"]);
        let again = s.cmd(&args, "").output().unwrap();
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(!again.status.success() && err.contains("already exists"), "{err}");
    }
}

#[test]
fn kill_9_during_the_unpack_takes_umoci_along_and_the_next_run_touches_nothing() {
    let s = Sandbox::new();
    s.with_stash();
    let target = s.arg("t");
    let args = ["rebuild", "--root", "x:1", "--", "--target-dir", &target];
    let (status, stderr, pid) = interrupt(&s, s.cmd(&args, "unpack"), "unpack", Signal::KILL);
    assert_killed_by(status, Signal::KILL, &stderr);
    assert_gone(pid, "umoci, whose parent was killed");
    let before = tree_listing(&s.path("t"));
    assert!(before.iter().any(|l| l.contains("half-unpacked")), "{before:?}");
    fs::remove_file(s.path("fake/unpack.pid")).unwrap();

    let again = s.cmd(&args, "").output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{err}");
    let root = s.path("t/build/image-root");
    assert!(
        err.contains(&format!("{} was left by an interrupted run", root.display())),
        "{err}"
    );
    assert!(err.contains("remove it or pass a new --target-dir"), "{err}");
    assert_eq!(tree_listing(&s.path("t")), before, "the second run touched the target");
    assert!(!s.path("fake/unpack.pid").exists());

    // Once the root is removed, as suggested, the target works again, and
    // the killed run's scratch dir goes once it is a minute old.
    let scratch: Vec<String> = names_in(&s.path("t"))
        .into_iter()
        .filter(|n| n.starts_with(".kiwi-stackbuild-"))
        .collect();
    assert_eq!(scratch.len(), 1, "the killed run's scratch dir: {scratch:?}");
    fs::remove_dir_all(&root).unwrap();
    s.ok(&args);
    assert!(
        s.path("t").join(&scratch[0]).is_dir(),
        "a scratch dir that may be new was removed"
    );
    age(&s.path("t").join(&scratch[0]));
    fs::remove_dir_all(&root).unwrap();
    s.ok(&args);
    assert!(
        !s.path("t").join(&scratch[0]).exists(),
        "the stale scratch dir is still there"
    );
    assert!(root.join("image/config.xml").is_file());
    assert!(!s.path("t/build/.kiwi-stackbuild-incomplete").exists());
}

/// Makes `dir` look untouched for two minutes.
fn age(dir: &Path) {
    let then = std::time::SystemTime::now() - Duration::from_secs(120);
    fs::File::open(dir).unwrap().set_modified(then).unwrap();
}

#[test]
fn kill_9_during_a_push_leaves_a_password_that_the_next_run_removes() {
    let s = Sandbox::new();
    s.with_stash();
    let secrets = secret_forms("u", PASSWORD);
    let args = [
        "--creds",
        "u",
        "--password-stdin",
        "push",
        "x:1",
        "docker://127.0.0.1:1/ns/x:1",
    ];
    let cmd = with_password(s.cmd(&args, "copy"), &s);
    let (status, stderr, pid) = interrupt(&s, cmd, "copy", Signal::KILL);
    assert_killed_by(status, Signal::KILL, &stderr);
    assert_gone(pid, "skopeo, whose parent was killed");
    // SIGKILL leaves no chance to clean up: the credentials dir is there.
    let left = names_in(&s.path("tmp"));
    assert!(
        left.len() == 1 && left[0].starts_with("kiwi-stackbuild-auth-"),
        "TMPDIR: {left:?}"
    );
    assert!(!files_holding(&s.path("tmp"), &secrets).is_empty());
    // A credentials dir a live run holds is never taken: this one is locked,
    // aged, and stays through the next run.
    let live = s.path("tmp/kiwi-stackbuild-auth-live");
    fs::create_dir(&live).unwrap();
    let held = fs::File::open(&live).unwrap();
    held.lock().unwrap();
    age(&live);
    age(&s.path("tmp").join(&left[0]));
    let out = with_password(s.cmd(&args, ""), &s).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(names_in(&s.path("tmp")), ["kiwi-stackbuild-auth-live"]);
    assert!(
        files_holding(&s.path("tmp"), &secrets).is_empty(),
        "the password is still on disk"
    );
    drop(held);
}

/// Every path below `dir` with its type, size and mtime, sorted.
fn tree_listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            format!(
                "{} {:?} {} {:?}",
                e.path().display(),
                m.file_type(),
                m.len(),
                m.modified().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

// --- Real skopeo, real registry -----------------------------------------------

/// A SKOPEO that records the pid of each `copy` (then is real skopeo).
fn real_skopeo_wrapper(s: &Sandbox) -> PathBuf {
    let path = s.path("bin/real-skopeo");
    write_script(
        &path,
        "#!/bin/sh\nif [ \"$1\" = copy ]; then echo $$ > \"$FAKE_DIR/real.pid.tmp\"; mv \"$FAKE_DIR/real.pid.tmp\" \"$FAKE_DIR/real.pid\"; fi\nexec skopeo \"$@\"\n",
    );
    path
}

/// A stash `big:1` with a layer large enough that skopeo is still copying
/// it when the signal comes.
fn big_stash(s: &Sandbox) {
    let root = s.path("big");
    fs::create_dir_all(root.join("image")).unwrap();
    fs::write(root.join("image/config.xml"), CONFIG_XML).unwrap();
    let mut f = fs::File::create(root.join("noise.bin")).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut chunk = Vec::with_capacity(1 << 20);
    for _ in 0..48 {
        chunk.clear();
        while chunk.len() < 1 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.extend_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk).unwrap();
    }
    s.ok(&[
        "stash",
        "--root",
        &s.arg("big"),
        "--container-name",
        "big",
        "--tag",
        "1",
    ]);
}

fn real_cmd(s: &Sandbox, reg: &Registry, args: &[&str]) -> Command {
    let login = reg.login().unwrap();
    let certs = reg.cert_dir();
    let mut all = vec![
        "--cert-dir",
        certs.to_str().unwrap(),
        "--creds",
        &login.user,
        "--password-stdin",
    ];
    all.extend(args);
    let mut cmd = s.cmd(&all, "");
    cmd.env("SKOPEO", real_skopeo_wrapper(s));
    let file = s.path("password");
    fs::write(&file, format!("{}\n", login.password)).unwrap();
    cmd.stdin(fs::File::open(file).unwrap());
    cmd
}

#[test]
fn real_push_and_pull_interrupted_leave_no_password_and_work_next_time() {
    let s = Sandbox::new();
    big_stash(&s);
    let login = Login {
        user: "builder".into(),
        password: PASSWORD.into(),
    };
    let reg = Registry::tls_auth(login);
    let secrets = secret_forms("builder", PASSWORD);
    let remote = reg.docker("ns/big:1");

    let push = real_cmd(&s, &reg, &["push", "big:1", &remote]);
    let (status, stderr, pid) = interrupt(&s, push, "real", Signal::INT);
    assert_killed_by(status, Signal::INT, &stderr);
    assert!(!alive(pid), "skopeo was not waited for");
    assert_nothing_left(&s, &secrets, "real push");
    let out = real_cmd(&s, &reg, &["push", "big:1", &remote]).output().unwrap();
    assert!(
        out.status.success(),
        "the next push failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Into a second store, so that every blob is fetched.
    let pull = |s: &Sandbox| {
        let mut c = real_cmd(s, &reg, &["pull", &remote, "got:1"]);
        c.env("KIWI_STACKBUILD_HOME", s.path("store2"));
        c
    };
    let (status, stderr, pid) = interrupt(&s, pull(&s), "real", Signal::TERM);
    assert_killed_by(status, Signal::TERM, &stderr);
    assert!(!alive(pid), "skopeo was not waited for");
    assert_nothing_left(&s, &secrets, "real pull");
    let leaks = files_holding(&s.path("store2"), &secrets);
    assert!(leaks.is_empty(), "the password is in {leaks:?}");
    let staging: Vec<String> = names_in(&s.path("store2"))
        .into_iter()
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(staging.is_empty(), "the store keeps {staging:?}");
    let out = pull(&s).output().unwrap();
    assert!(
        out.status.success(),
        "the next pull failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "got:1");
    assert_nothing_left(&s, &secrets, "real pull, the next run");
}

#[test]
fn password_stdin_logs_in_and_a_wrong_or_empty_one_is_refused() {
    let s = Sandbox::new();
    s.with_stash();
    let login = Login {
        user: "builder".into(),
        password: PASSWORD.into(),
    };
    let reg = Registry::tls_auth(login);
    let remote = reg.docker("ns/x:1");
    let out = real_cmd(&s, &reg, &["push", "x:1", &remote]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pull = real_cmd(&s, &reg, &["pull", &remote, "again:1"]);
    let out = pull.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    for (stdin, want) in [("wrong\n", "refused the credentials"), ("\n", "read an empty password")] {
        let file = s.path("password-2");
        fs::write(&file, stdin).unwrap();
        let mut c = real_cmd(&s, &reg, &["pull", &remote, "again:2"]);
        c.stdin(fs::File::open(&file).unwrap());
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{stdin:?}: {err}");
    }
    let both = s
        .cmd(&["--creds", "u:p", "--password-stdin", "push", "x:1", &remote], "")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&both.stderr).contains("--creds u has a password, and --password-stdin reads one"));
    assert_nothing_left(&s, &secret_forms("builder", PASSWORD), "--password-stdin");
}

/// `kill -INT` sent to us alone while we run in a terminal's foreground,
/// where a Ctrl-C would have reached kiwi-ng too and is not sent again: once
/// kiwi-ng's grace is over it gets its SIGINT then, not a SIGKILL that
/// would leave its mounts behind.
#[test]
fn sigint_to_us_alone_in_a_terminal_still_reaches_kiwi_ng() {
    if Command::new("script").arg("--version").output().is_err() {
        panic!("script (util-linux) is needed to run under a terminal");
    }
    let s = Sandbox::new();
    s.with_stash();
    let target = s.arg("t");
    let args = ["rebuild", "--root", "x:1", "--", "--target-dir", &target];
    let inner = s.cmd(&args, "kiwi");
    // script(1) runs the command as the foreground group of a new terminal.
    let line: Vec<String> = std::iter::once(BIN.to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line.join(" "), "/dev/null"]).env_clear();
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let _ = fs::remove_file(s.path("fake/kiwi.pid"));
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kiwi = wait_for_pid(&s.path("fake/kiwi.pid"), &mut child);
    let stat = fs::read_to_string(format!("/proc/{kiwi}/stat")).unwrap();
    let ours: i32 = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let started = Instant::now();
    rustix::process::kill_process(rustix::process::Pid::from_raw(ours).unwrap(), Signal::INT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_gone(kiwi, "kiwi-ng");
    let got = fs::read_to_string(s.path("fake/kiwi-got")).unwrap_or_default();
    assert_eq!(
        got,
        "INT\n",
        "kiwi-ng was not asked with SIGINT:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(14),
        "it was asked at once: {:?}",
        started.elapsed()
    );
}
