//! `inputs` against a real apt repository served on 127.0.0.1: a package
//! built with `dpkg-deb --build`, indexed with `apt-ftparchive` (apt-utils;
//! `contrib/setup.sh` installs both), served by `python3 -m http.server`,
//! fetched by the real curl. The suite's InRelease changes between two
//! runs and `inputs --against` names it; a repository that does not answer
//! makes the record not reusable, with the reason; a copy of the stash in
//! an OCI layout is read with the real skopeo. kiwi-ng is a fake that
//! prints its version and fills the root of a build. Needs root (rebuild
//! --keep-root); never reaches beyond 127.0.0.1.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_kiwi-stackbuild");

const FAKE_KIWI: &str = r#"#!/bin/sh
PATH=/usr/bin:/bin
if [ "$1" = --version ]; then echo "KIWI (next generation) version 11.1.6"; exit 0; fi
case " $* " in *" --help "*) exit 0 ;; esac
target=
while [ $# -gt 0 ]; do
    case $1 in --target-dir) target=$2; shift ;; esac
    shift
done
mkdir -p "$target/build/image-root"
cp -a "$FAKE_KIWI_ROOT/." "$target/build/image-root/"
"#;

const CONFIG_XML: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="apt-test">
    <description type="system"><author>A</author><contact>a@b</contact><specification>s</specification></description>
    <preferences>
        <version>1.0.0</version>
        <packagemanager>apt</packagemanager>
        <type image="tbz"/>
    </preferences>
    <repository type="apt-deb" alias="bookworm" distribution="bookworm" components="main">
        <source path="@URL@"/>
    </repository>
</image>
"#;

/// The HTTP server, killed when the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves `dir` on 127.0.0.1 at a free port; returns the server and its URL.
fn serve(dir: &Path) -> (Server, String) {
    let mut child = Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs the test's HTTP server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
    let port = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .unwrap_or_else(|| panic!("no port in {line:?}"))
        .to_string();
    (Server(child), format!("http://127.0.0.1:{port}"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Adds the package `name` to the apt repository `repo` and indexes it
/// again: `pool/main`, `dists/bookworm/{Release,InRelease}`.
fn add_package(repo: &Path, name: &str) {
    let pkg = repo.parent().unwrap().join(format!("build-{name}"));
    fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    fs::create_dir_all(pkg.join("usr/share/doc").join(name)).unwrap();
    fs::write(pkg.join("usr/share/doc").join(name).join("README"), name).unwrap();
    fs::write(
        pkg.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: T <t@t>\nDescription: test\n"),
    )
    .unwrap();
    fs::create_dir_all(repo.join("pool/main")).unwrap();
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&pkg)
        .arg(repo.join(format!("pool/main/{name}_1.0_all.deb"))));
    let dist = repo.join("dists/bookworm");
    let binary = dist.join("main/binary-all");
    fs::create_dir_all(&binary).unwrap();
    let packages = run(Command::new("apt-ftparchive")
        .args(["packages", "pool"])
        .current_dir(repo));
    fs::write(binary.join("Packages"), &packages.stdout).unwrap();
    let release = run(Command::new("apt-ftparchive")
        .args(["-o", "APT::FTPArchive::Release::Suite=bookworm", "release", "."])
        .current_dir(&dist));
    fs::write(dist.join("Release"), &release.stdout).unwrap();
    // InRelease is Release clearsigned; the record hashes its bytes, so an
    // unsigned copy serves as well and needs no key.
    fs::write(dist.join("InRelease"), &release.stdout).unwrap();
}

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::Builder::new().prefix("inputs-repository-").tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        fs::write(bin.join("kiwi-ng"), FAKE_KIWI).unwrap();
        fs::set_permissions(bin.join("kiwi-ng"), fs::Permissions::from_mode(0o755)).unwrap();
        Sandbox { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A description whose one repository is at `url`.
    fn description(&self, rel: &str, url: &str) -> PathBuf {
        let d = self.path(rel);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("config.xml"), CONFIG_XML.replace("@URL@", url)).unwrap();
        d
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.dir.path())
            .env("KIWI_STACKBUILD_HOME", self.path("store"))
            .env("KIWI_NG", self.path("bin/kiwi-ng"))
            .env("CURL", "/usr/bin/curl")
            .env("FAKE_KIWI_ROOT", self.path("built"))
            .output()
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sha256_of(path: &Path) -> String {
    format!("sha256:{:x}", Sha256::digest(fs::read(path).unwrap()))
}

#[test]
fn a_changed_suite_is_named_and_a_silent_one_is_not_reusable() {
    let sandbox = Sandbox::new();
    let repo = sandbox.path("www");
    add_package(&repo, "hello");
    let (_server, url) = serve(&repo);
    let desc = sandbox.description("desc", &url);
    let d = desc.to_str().unwrap();
    // What a build of it stores: a root with its description in /image.
    fs::create_dir_all(sandbox.path("built/image")).unwrap();
    fs::copy(desc.join("config.xml"), sandbox.path("built/image/config.xml")).unwrap();

    let out = sandbox.run(&["inputs", "--json", "--description", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    let part = &record["parts"]["repository bookworm"];
    assert_eq!(
        part["InRelease"],
        sha256_of(&repo.join("dists/bookworm/InRelease")),
        "{record}"
    );
    assert_eq!(part["source"], url.as_str());
    assert_eq!(record["reusable"], true, "{record}");

    // rebuild --reuse: built and kept, then reused while the suite stays.
    let reuse = |description: &str, target: &str| -> String {
        let out = sandbox.run(&[
            "rebuild",
            "--description",
            description,
            "--keep-root",
            "kept",
            "--reuse",
            "--",
            "--target-dir",
            sandbox.path(target).to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let log = reuse(d, "t1");
    assert!(log.contains("--reuse: there is no kept:1.0.0 yet: building"), "{log}");
    let same = sandbox.run(&["inputs", "--description", d, "--against", "kept"]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same.stderr));
    let log = reuse(d, "t2");
    assert!(log.contains("inputs unchanged since kept:1.0.0, built "), "{log}");

    // A new package: a new Packages index, so a new InRelease, and a build.
    add_package(&repo, "world");
    let changed = sandbox.run(&["inputs", "--description", d, "--against", "kept"]);
    assert_eq!(changed.status.code(), Some(1), "{}", text(&changed.stderr));
    assert_eq!(text(&changed.stdout), "repository bookworm: InRelease changed\n");
    let log = reuse(d, "t3");
    assert!(
        log.contains("--reuse: the inputs changed since kept:1.0.0 (repository bookworm: InRelease changed): building"),
        "{log}"
    );
    let same = sandbox.run(&["inputs", "--description", d, "--against", "kept"]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "the new build was not kept: {}",
        text(&same.stderr)
    );
    // One more package: what kept records is behind the suite again.
    add_package(&repo, "again");
    // An image elsewhere carries the record too: its labels are read
    // with skopeo inspect --config.
    let layout = sandbox.path("layout");
    let dest = format!("oci:{}:kept", layout.display());
    let pushed = sandbox.run(&["push", "kept", &dest]);
    assert!(pushed.status.success(), "{}", text(&pushed.stderr));
    let there = sandbox.run(&["inputs", "--description", d, "--against", &dest]);
    assert_eq!(there.status.code(), Some(1), "{}", text(&there.stderr));
    assert_eq!(text(&there.stdout), "repository bookworm: InRelease changed\n");

    // Without InRelease, Release identifies the suite.
    fs::remove_file(repo.join("dists/bookworm/InRelease")).unwrap();
    let out = sandbox.run(&["inputs", "--json", "--description", d]);
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        record["parts"]["repository bookworm"]["Release"],
        sha256_of(&repo.join("dists/bookworm/Release"))
    );

    // Nothing listens on port 1: not reusable, and the log says why.
    let gone = sandbox.description("gone", "http://127.0.0.1:1/debian");
    let out = sandbox.run(&["inputs", "--description", gone.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.contains(
            "not reusable:\n  repository bookworm: fetching http://127.0.0.1:1/debian/dists/bookworm/InRelease"
        ),
        "{stdout}"
    );
    assert!(
        stderr.contains("warn: repository bookworm: fetching http://127.0.0.1:1/"),
        "{stderr}"
    );
    assert!(stderr.contains("the record is not reusable"), "{stderr}");
    // --reuse builds, and says why.
    let log = reuse(gone.to_str().unwrap(), "t4");
    assert!(
        log.contains("--reuse: the inputs cannot vouch for a root (repository bookworm: fetching http://127.0.0.1:1/"),
        "{log}"
    );
    assert!(
        stderr.contains("Failed to connect") || stderr.contains("Couldn't connect"),
        "{stderr}"
    );
}
