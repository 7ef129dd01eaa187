//! The kiwi-ng plugin shim in contrib/kiwi-plugin: installed next to the
//! kiwi-ng that `pip install kiwi` gives, `kiwi-ng system rebuild` hands its
//! arguments and kiwi-ng's global options to kiwi-stackbuild.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixture::kiwi_ng;

/// The Python interpreter kiwi-ng runs with (from its `#!` line).
fn kiwi_python() -> PathBuf {
    let kiwi = kiwi_ng();
    let path = if Path::new(&kiwi).components().count() > 1 {
        PathBuf::from(&kiwi)
    } else {
        let out = Command::new("sh")
            .arg("-c")
            .arg("command -v \"$0\"")
            .arg(&kiwi)
            .output()
            .unwrap();
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    };
    let script = fs::read_to_string(fs::canonicalize(&path).unwrap()).unwrap();
    let shebang = script.lines().next().unwrap();
    PathBuf::from(shebang.trim_start_matches("#!").split_whitespace().next().unwrap())
}

/// Installs the plugin into `dir` (to be put on PYTHONPATH), building it
/// from a copy so pip leaves nothing in the source tree.
fn install_plugin(dir: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/kiwi-plugin");
    let plugin = dir.with_file_name("plugin-source");
    let copied = Command::new("cp").arg("-r").arg(&source).arg(&plugin).status().unwrap();
    assert!(copied.success());
    let out = Command::new(kiwi_python())
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
        ])
        .arg(dir)
        .arg(&plugin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kiwi_ng_system_rebuild_hands_over_to_kiwi_stackbuild() {
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    install_plugin(&site);
    let recorder = tmp.path().join("record-argv");
    let argv_file = tmp.path().join("argv");
    fs::write(
        &recorder,
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\nexit 7\n", argv_file.display()),
    )
    .unwrap();
    fs::set_permissions(&recorder, fs::Permissions::from_mode(0o755)).unwrap();

    let kiwi = |program: &Path, args: &[&str]| {
        Command::new(kiwi_ng())
            .args(args)
            .env("PYTHONPATH", &site)
            .env("KIWI_STACKBUILD", program)
            .env("KIWI_STACKBUILD_HOME", tmp.path().join("store"))
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let out = kiwi(
        &recorder,
        &[
            "--profile",
            "a",
            "--profile",
            "b",
            "--type",
            "tbz",
            "--target-arch",
            "x86_64",
            "system",
            "rebuild",
            "--root",
            "base:1",
            "--",
            "--target-dir",
            "/t",
            "--add-package",
            "vim",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "kiwi-stackbuild's exit status is kiwi-ng's: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let argv = fs::read_to_string(&argv_file).unwrap();
    let want = [
        "--profile",
        "a",
        "--profile",
        "b",
        "--type",
        "tbz",
        "--target-arch",
        "x86_64",
        "rebuild",
        "--root",
        "base:1",
        "--",
        "--target-dir",
        "/t",
        "--add-package",
        "vim",
    ];
    assert_eq!(argv.lines().collect::<Vec<_>>(), want);

    // With the real binary, its own checks and errors come through.
    let real = Path::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"));
    let out = kiwi(
        real,
        &[
            "system",
            "rebuild",
            "--root",
            "nosuch:1",
            "--",
            "--target-dir",
            tmp.path().join("t").to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no stash nosuch:1"), "{stderr}");

    let help = kiwi(real, &["system", "--help"]);
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("rebuild"),
        "kiwi-ng system --help does not list rebuild"
    );
}

/// A stand-in for kiwi-stackbuild, at `dir/name`, running `body` (sh).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn kiwi_ng_logfile_and_debug_reach_kiwi_stackbuild() {
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    install_plugin(&site);
    let argv_file = tmp.path().join("argv");
    let talker = script(
        tmp.path(),
        "talker",
        &format!(
            "printf '%s\\n' \"$@\" > {}\necho 'a result on stdout'\necho 'a log line on stderr' >&2\nexit 3",
            argv_file.display()
        ),
    );
    let logfile = tmp.path().join("kiwi.log");
    let kiwi = |program: &Path, logfile: &str| {
        Command::new(kiwi_ng())
            .args(["--debug", "--logfile", logfile, "system", "rebuild", "--root", "base:1"])
            .args(["--", "--target-dir", "/t"])
            .env("PYTHONPATH", &site)
            .env("KIWI_STACKBUILD", program)
            .output()
            .unwrap()
    };
    let out = kiwi(&talker, logfile.to_str().unwrap());
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let argv = fs::read_to_string(&argv_file).unwrap();
    assert_eq!(
        argv.lines().collect::<Vec<_>>(),
        ["--debug", "rebuild", "--root", "base:1", "--", "--target-dir", "/t"]
    );
    let log = fs::read_to_string(&logfile).unwrap();
    assert!(log.contains("a result on stdout\n"), "{log}");
    assert!(log.contains("a log line on stderr\n"), "{log}");
    // The terminal still gets both, each on its own stream.
    assert!(String::from_utf8_lossy(&out.stdout).contains("a result on stdout"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a log line on stderr"));

    // kiwi-ng's `--logfile stdout`: everything goes to stdout.
    let out = kiwi(&talker, "stdout");
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("a result on stdout") && stdout.contains("a log line on stderr"),
        "{stdout}"
    );

    // A kiwi-stackbuild killed by a signal takes kiwi-ng along with the same.
    let killed = script(tmp.path(), "killed", "kill -TERM $$");
    let out = kiwi(&killed, logfile.to_str().unwrap());
    assert_eq!(out.status.signal(), Some(15), "{:?}", out.status);
}

#[test]
fn kiwi_ng_system_rebuild_help_shows_the_four_forms() {
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    install_plugin(&site);
    let out = Command::new(kiwi_ng())
        .args(["system", "rebuild", "--help"])
        .env("PYTHONPATH", &site)
        .env("COLUMNS", "80")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8_lossy(&out.stdout);
    let forms = [
        "W1  kiwi-ng system rebuild --description D --keep-root REF -- --target-dir T",
        "W2  kiwi-ng system rebuild --root REF -- --target-dir T",
        "W3  kiwi-ng system rebuild --root REF -- --description D --target-dir T",
        "W4  kiwi-ng system rebuild --description D -- --target-dir T",
    ];
    for form in forms {
        assert!(help.lines().any(|l| l.trim() == form), "no {form:?} in\n{help}");
    }
    assert!(
        help.contains("Usage: kiwi-ng system rebuild [OPTIONS] [-- KIWI-NG-ARGS]"),
        "{help}"
    );
}
