//! contrib/kiwi-stackbuild.spec builds with `rpmbuild -bb` from the two
//! sources contrib/rpm-sources.sh makes (the committed tree, `git archive
//! HEAD`, and every crate vendored), and the packages hold what the spec
//! says where it says. Nothing is installed: the packages are only queried
//! with `rpm -qp`, and the binary is taken out of its package to run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `rpm -qp ARGS package`, one answer a line.
fn query(package: &Path, args: &[&str]) -> Vec<String> {
    lines(&run(Command::new("rpm").arg("-qp").args(args).arg(package)))
}

/// Builds both packages in `topdir` and returns them, main package first.
fn build(topdir: &Path) -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The toolchain cargo test runs with; it is not in Debian's rpm
    // database, hence --nodeps for the BuildRequires.
    let cargo_dir = Path::new(env!("CARGO")).parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(cargo_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    run(Command::new(root.join("contrib/rpm-sources.sh"))
        .arg(topdir.join("SOURCES"))
        .env("PATH", &path));
    let mut rpmbuild = Command::new("rpmbuild");
    rpmbuild
        .args(["-bb", "--nodeps", "--define"])
        .arg(format!("_topdir {}", topdir.display()))
        .arg(root.join("contrib/kiwi-stackbuild.spec"))
        .env("PATH", path)
        // The spec builds into its own target/, whatever cargo test uses.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    run(&mut rpmbuild);
    let version = env!("CARGO_PKG_VERSION");
    let arch = std::env::consts::ARCH;
    let rpms = topdir.join("RPMS").join(arch);
    (
        rpms.join(format!("kiwi-stackbuild-{version}-0.{arch}.rpm")),
        rpms.join(format!("kiwi-stackbuild-obs-hook-{version}-0.{arch}.rpm")),
    )
}

#[test]
fn rpmbuild_packages_the_binary_man_pages_completions_and_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let (main, hook) = build(tmp.path());

    let files = query(&main, &["-l"]);
    let has = |path: &str| files.iter().any(|f| f == path);
    for path in [
        "/usr/bin/kiwi-stackbuild",
        "/usr/share/bash-completion/completions/kiwi-stackbuild",
        "/usr/share/zsh/site-functions/_kiwi-stackbuild",
        "/usr/share/fish/vendor_completions.d/kiwi-stackbuild.fish",
    ] {
        assert!(has(path), "{path} is not in {}:\n{}", main.display(), files.join("\n"));
    }
    // Every man page the binary makes is packaged.
    let man = tmp.path().join("man");
    run(Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .arg("man")
        .arg("--output")
        .arg(&man));
    let mut pages = 0;
    for page in fs::read_dir(&man).unwrap() {
        let name = page.unwrap().file_name().into_string().unwrap();
        let path = format!("/usr/share/man/man1/{name}");
        assert!(has(&path) || has(&format!("{path}.gz")), "{path} is not packaged");
        pages += 1;
    }
    assert!(pages > 1, "the binary made {pages} man pages");
    assert_eq!(
        query(&hook, &["-l"]),
        ["/usr/lib/build", "/usr/lib/build/kiwi_post_run"]
    );

    let requires = query(&main, &["--requires"]);
    for need in ["skopeo", "/usr/bin/kiwi-ng"] {
        assert!(requires.iter().any(|r| r == need), "no Requires {need}: {requires:?}");
    }
    assert!(
        !requires.iter().any(|r| r.starts_with("umoci") || r.starts_with("curl")),
        "{requires:?}"
    );
    // umoci unpacks only with KIWI_STACKBUILD_UNPACKER=umoci; curl reads
    // the repositories' metadata for the input record.
    assert_eq!(query(&main, &["--recommends"]), ["curl", "umoci"]);
    let version = env!("CARGO_PKG_VERSION");
    assert!(query(&hook, &["--requires"]).contains(&format!("kiwi-stackbuild = {version}-0")));
    assert!(query(&hook, &["--provides"]).contains(&"kiwi_post_run".to_string()));
    assert_eq!(query(&hook, &["--conflicts"]), ["kiwi_post_run"]);

    // The packaged binary runs.
    let unpacked = tmp.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    let archive = run(Command::new("rpm2archive")
        .args(["-n", "-"])
        .stdin(fs::File::open(&main).unwrap()));
    let tar = tmp.path().join("main.tar");
    fs::write(&tar, &archive.stdout).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&unpacked));
    let out = run(Command::new(unpacked.join("usr/bin/kiwi-stackbuild")).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kiwi-stackbuild {version}")
    );
}
