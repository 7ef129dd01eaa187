//! Peak memory at the size of a build host's /usr: a stash and a re-stash
//! of a 134,000-entry root each stay at most 64 MB resident, as measured
//! by the kernel for the process (its whole life, every thread).

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

/// Packages of the made root, 100 entries each.
const PACKAGES: usize = 1340;
/// 64 MB as the benchmark counts them (1,000,000 bytes each), in the KiB
/// that the kernel's peak is given in.
const LIMIT_KIB: i64 = 64_000_000 / 1024;
/// Files of incompressible data, and their size.
const BIG_FILES: usize = 16;
const BIG_FILE: usize = 4 << 20;

/// A root shaped like /usr: of every 100 entries 10 directories, 85 files
/// and 5 symlinks, with paths of about 70 bytes, and small file contents
/// (memory grows with entries and names, not with bytes), and 64 MiB of
/// incompressible data.
fn make_root(root: &Path) -> usize {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/debian-bookworm/config.xml");
    fs::create_dir_all(root.join("image")).unwrap();
    fs::copy(config, root.join("image/config.xml")).unwrap();
    let mut entries = 0;
    for p in 0..PACKAGES {
        let package = root.join(format!("usr/lib/python3/dist-packages/package-{p:04}"));
        for m in 0..9 {
            let module = package.join(format!("module{m}"));
            fs::create_dir_all(&module).unwrap();
            let files = if m < 4 { 10 } else { 9 };
            for f in 0..files {
                let body = format!("# module {m} of package {p}, part {f}\n");
                fs::write(module.join(format!("part-{f:02}-of-the-module.py")), body).unwrap();
            }
            if m < 5 {
                symlink("part-00-of-the-module.py", module.join("__init__.py")).unwrap();
            }
        }
        entries += 100;
    }
    // And some bigger files that do not compress, so that every buffer of
    // the compressors is full at some point.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in 0..BIG_FILES {
        let bytes: Vec<u8> = (0..BIG_FILE / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        fs::write(
            root.join(format!("usr/lib/python3/dist-packages/package-{b:04}/data.bin")),
            bytes,
        )
        .unwrap();
        entries += 1;
    }
    entries
}

/// Runs kiwi-stackbuild to its end; its exit status and peak resident
/// size in KiB, as the kernel counted it for that one process.
// The child is reaped by wait4, which std's wait cannot stand in for.
#[allow(clippy::zombie_processes)]
fn run_measured(home: &Path, args: &[&str]) -> (ExitStatus, i64, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(args)
        .env("KIWI_STACKBUILD_HOME", home)
        .env_remove("RUST_BACKTRACE")
        .env_remove("SOURCE_DATE_EPOCH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kiwi-stackbuild");
    let stderr = std::thread::spawn({
        let mut pipe = child.stderr.take().unwrap();
        move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut pipe, &mut text).unwrap();
            text
        }
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct;
    // wait4 on the pid of our own unwaited child (std never waits for one
    // on its own) fills it and the status, and reaps the child.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let pid = child.id() as libc::pid_t;
        assert_eq!(libc::wait4(pid, &mut status, 0, &mut usage), pid, "wait4 failed");
        usage
    };
    (ExitStatus::from_raw(status), usage.ru_maxrss, stderr.join().unwrap())
}

#[test]
fn a_stash_and_a_restash_of_134k_entries_stay_under_64_mb() {
    // In memory where there is a tmpfs: 134,000 creates and as many
    // unlinks are slow on some disks' file systems, and what is measured
    // is not their speed.
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let (root, home) = (tmp.path().join("root"), tmp.path().join("store"));
    let entries = make_root(&root);
    assert!(entries >= 134_000, "{entries} entries");
    let stash = ["stash", "--root", root.to_str().unwrap(), "--container-name", "usr"];

    let (status, peak, stderr) = run_measured(&home, &stash);
    assert!(status.success(), "stash failed: {stderr}");
    assert!(peak <= LIMIT_KIB, "the stash of {entries} entries peaked at {peak} KiB");

    // A re-stash holds the cached tree of the image before, and the scan.
    fs::write(
        root.join("usr/lib/python3/dist-packages/package-0007/module3/new.py"),
        "new\n",
    )
    .unwrap();
    fs::remove_dir_all(root.join("usr/lib/python3/dist-packages/package-0100")).unwrap();
    let (status, peak, stderr) = run_measured(&home, &stash);
    assert!(status.success(), "re-stash failed: {stderr}");
    assert!(
        stderr.contains("(1 whiteouts)"),
        "not the delta of one removal: {stderr}"
    );
    assert!(
        peak <= LIMIT_KIB,
        "the re-stash of {entries} entries peaked at {peak} KiB"
    );
}
