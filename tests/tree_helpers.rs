//! Proves the shared test helpers: the special tree holds what it promises,
//! snapshots of equal trees compare equal, and every kind of change is
//! caught. Runs as root (device nodes, foreign owners, capabilities).

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::fixture;
use common::tree::{self, Entry, Kind, Snapshot};

fn special_tree(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    tree::make_special_tree(&root);
    root
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn cp_a(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

fn entries<'a>(snapshot: &'a Snapshot, wanted: impl Fn(&Entry) -> bool + 'a) -> Vec<&'a [u8]> {
    snapshot
        .iter()
        .filter(|(_, entry)| wanted(entry))
        .map(|(path, _)| path.as_slice())
        .collect()
}

#[test]
fn special_tree_built_twice_gives_equal_snapshots() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = tree::snapshot(&special_tree(a.path()));
    let second = tree::snapshot(&special_tree(b.path()));
    assert!(!first.is_empty());
    tree::assert_same_tree(&first, &second);
}

#[test]
fn special_tree_has_every_kind_of_entry() {
    let dir = tempfile::tempdir().unwrap();
    let root = special_tree(dir.path());
    let snap = tree::snapshot(&root);
    let has = |what: &str, wanted: &dyn Fn(&Entry) -> bool| {
        assert!(!entries(&snap, wanted).is_empty(), "no {what} in the special tree");
    };
    has("character device 1:3", &|e| {
        e.kind == Kind::CharDevice { major: 1, minor: 3 }
    });
    has("block device 7:0", &|e| {
        e.kind == Kind::BlockDevice { major: 7, minor: 0 }
    });
    has("fifo", &|e| e.kind == Kind::Fifo);
    has("setuid+setgid file", &|e| e.mode & 0o6000 == 0o6000);
    has("sticky 1777 directory", &|e| e.kind == Kind::Dir && e.mode == 0o1777);
    has("user-owned symlink", &|e| {
        matches!(e.kind, Kind::Symlink { .. }) && e.uid == 1234 && e.gid == 5678
    });
    has(
        "absolute symlink",
        &|e| matches!(&e.kind, Kind::Symlink { target } if target.starts_with(b"/")),
    );
    has(
        "relative symlink",
        &|e| matches!(&e.kind, Kind::Symlink { target } if target.starts_with(b"../")),
    );
    has("empty file", &|e| matches!(e.kind, Kind::File { size: 0, .. }));
    has(
        "1 MiB file",
        &|e| matches!(e.kind, Kind::File { size, .. } if size > 1024 * 1024),
    );
    has("security.capability", &|e| {
        e.xattrs.contains_key(b"security.capability".as_slice())
    });
    has("user xattr", &|e| {
        e.xattrs.keys().any(|name| name.starts_with(b"user."))
    });
    has("access ACL", &|e| {
        e.xattrs.contains_key(b"system.posix_acl_access".as_slice())
    });
    has("default ACL", &|e| {
        e.xattrs.contains_key(b"system.posix_acl_default".as_slice())
    });
    assert!(
        snap.keys().any(|path| std::str::from_utf8(path).is_err()),
        "no non-UTF-8 name"
    );
    assert!(snap.keys().any(|path| path.contains(&b'\n')), "no name with a newline");
    assert!(snap.keys().any(|path| path.len() > 100), "no name over 100 bytes");
    assert!(snap.contains_key(b"image/config.xml".as_slice()));
    for kept in ["bin", "usr/bin/relative", "etc/dangling"] {
        assert!(fs::symlink_metadata(root.join(kept)).unwrap().is_symlink(), "{kept}");
    }
    assert!(root.join("bin").is_dir(), "bin should point to a directory");
    assert!(!root.join("etc/dangling").exists(), "etc/dangling should dangle");
    for dir in ["dev", "proc", "sys", "srv/empty"] {
        let children = fs::read_dir(root.join(dir)).unwrap().count();
        assert_eq!(children > 0, dir != "srv/empty", "children of {dir}");
    }
}

#[test]
fn special_tree_links_three_names_across_directories() {
    let dir = tempfile::tempdir().unwrap();
    let snap = tree::snapshot(&special_tree(dir.path()));
    let groups: BTreeSet<&Vec<u8>> = snap.values().filter_map(|e| e.link_group.as_ref()).collect();
    let biggest = groups
        .iter()
        .map(|group| entries(&snap, |e| e.link_group.as_ref() == Some(group)))
        .max_by_key(Vec::len)
        .expect("no hard links in the special tree");
    assert_eq!(biggest.len(), 3, "names: {biggest:?}");
    let parents: BTreeSet<_> = biggest
        .iter()
        .map(|path| Path::new(OsStr::from_bytes(path)).parent())
        .collect();
    assert_eq!(parents.len(), 3, "the three names should be in three directories");
}

#[test]
fn special_tree_times_are_fixed_distinct_and_past() {
    let dir = tempfile::tempdir().unwrap();
    let snap = tree::snapshot(&special_tree(dir.path()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let unlinked: Vec<&Entry> = snap.values().filter(|e| e.link_group.is_none()).collect();
    let times: BTreeSet<i64> = unlinked.iter().map(|e| e.mtime).collect();
    assert_eq!(times.len(), unlinked.len(), "mtimes should be distinct");
    assert!(
        times.iter().all(|&t| t > 0 && (t as u64) < now - 86_400),
        "mtimes should be in the past: {times:?}"
    );
}

#[test]
fn special_tree_xattrs_read_back_with_the_acl_and_capability_tools() {
    let dir = tempfile::tempdir().unwrap();
    let root = special_tree(dir.path());
    let caps = run(Command::new("getcap").arg(root.join("usr/bin/ping")));
    assert!(caps.contains("cap_net_raw=ep"), "getcap: {caps}");
    let acl = run(Command::new("getfacl")
        .args(["-n", "-p"])
        .arg(root.join("srv/acl-file")));
    assert!(acl.contains("user:1234:r--"), "getfacl: {acl}");
    let default = run(Command::new("getfacl")
        .args(["-n", "-p", "-d"])
        .arg(root.join("srv/acl-dir")));
    assert!(default.contains("group:5678:rwx"), "getfacl -d: {default}");
}

#[test]
fn copy_with_cp_a_compares_equal() {
    let dir = tempfile::tempdir().unwrap();
    let root = special_tree(dir.path());
    let copy = dir.path().join("copy");
    cp_a(&root, &copy);
    tree::assert_same_tree(&tree::snapshot(&root), &tree::snapshot(&copy));
}

#[test]
fn copy_through_tar_compares_equal() {
    let dir = tempfile::tempdir().unwrap();
    let root = special_tree(dir.path());
    let copy = dir.path().join("copy");
    fs::create_dir(&copy).unwrap();
    let flags = ["--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner"];
    let mut create = Command::new("tar")
        .args(flags)
        .args(["-cpf", "-", "-C"])
        .arg(&root)
        .arg(".")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = create.stdout.take().unwrap();
    run(Command::new("tar")
        .args(flags)
        .args(["-xpf", "-", "-C"])
        .arg(&copy)
        .stdin(stdout));
    assert!(create.wait().unwrap().success());
    tree::assert_same_tree(&tree::snapshot(&root), &tree::snapshot(&copy));
}

#[test]
fn excluding_keeps_the_directories_but_not_their_contents() {
    let dir = tempfile::tempdir().unwrap();
    let root = special_tree(dir.path());
    let all = tree::snapshot(&root);
    let kept = tree::snapshot_excluding(&root, &[b"dev", b"proc/", b"sys"]);
    for name in ["dev", "proc", "sys"] {
        assert!(kept.contains_key(name.as_bytes()), "{name} itself should stay");
        let inside = format!("{name}/");
        assert!(
            all.keys().any(|p| p.starts_with(inside.as_bytes())),
            "{name} has no contents to leave out"
        );
        assert!(
            !kept.keys().any(|p| p.starts_with(inside.as_bytes())),
            "contents of {name} should be left out"
        );
    }
    assert!(
        kept.contains_key(b"devices/null".as_slice()),
        "only paths under dev/ go, not devices/"
    );
}

/// A change to a copy of the special tree, and the path it must be reported at.
type Change = (&'static str, fn(&Path));

fn changes() -> Vec<Change> {
    vec![
        ("etc/hostname", |r| fs::remove_file(r.join("etc/hostname")).unwrap()),
        ("usr/bin/suid", |r| {
            run(Command::new("chmod").arg("0755").arg(r.join("usr/bin/suid")));
        }),
        ("home/user/link", |r| {
            std::os::unix::fs::lchown(r.join("home/user/link"), Some(0), None).unwrap()
        }),
        ("usr/bin/ping", |r| {
            xattr::remove(r.join("usr/bin/ping"), "security.capability").unwrap()
        }),
        ("bin", |r| {
            run(Command::new("touch")
                .args(["-h", "-d", "@1000000000"])
                .arg(r.join("bin")));
        }),
        ("etc/absolute", |r| {
            let link = r.join("etc/absolute");
            fs::remove_file(&link).unwrap();
            std::os::unix::fs::symlink("/usr/bin/other", &link).unwrap();
        }),
        ("etc/hardlinked-three", |r| {
            let name = r.join("etc/hardlinked-three");
            let content = fs::read(&name).unwrap();
            fs::remove_file(&name).unwrap();
            fs::write(&name, content).unwrap();
        }),
        ("var/lib/big.bin", |r| {
            use std::os::unix::fs::FileExt;
            let file = fs::OpenOptions::new()
                .write(true)
                .open(r.join("var/lib/big.bin"))
                .unwrap();
            file.write_all_at(b"x", 4096).unwrap();
        }),
        ("names/caf\\xe9", |r| {
            fs::remove_file(r.join(OsStr::from_bytes(b"names/caf\xe9"))).unwrap()
        }),
    ]
}

#[test]
fn comparison_reports_each_kind_of_change_at_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = special_tree(dir.path());
    let expected = tree::snapshot(&root);
    for (index, (path, change)) in changes().into_iter().enumerate() {
        let copy = dir.path().join(format!("copy{index}"));
        cp_a(&root, &copy);
        change(&copy);
        let diffs = tree::tree_diff(&expected, &tree::snapshot(&copy));
        assert!(!diffs.is_empty(), "changing {path} went unnoticed");
        let shown = format!("\"{path}\"");
        assert!(
            diffs.iter().any(|diff| diff.starts_with(&shown)),
            "changing {path} reported as {diffs:#?}"
        );
    }
}

#[test]
#[should_panic(expected = "trees differ")]
fn assert_same_tree_panics_when_a_file_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let root = special_tree(dir.path());
    let before = tree::snapshot(&root);
    fs::remove_file(root.join("usr/share/doc/kiwi/README")).unwrap();
    tree::assert_same_tree(&before, &tree::snapshot(&root));
}

#[test]
fn escape_shows_odd_bytes() {
    let cases: [(&[u8], &str); 4] = [
        (b"usr/bin", r#""usr/bin""#),
        (b"caf\xe9", r#""caf\xe9""#),
        (b"new\nline", r#""new\nline""#),
        (b"\xff\xfe", r#""\xff\xfe""#),
    ];
    for (bytes, shown) in cases {
        assert_eq!(tree::escape(bytes), shown);
    }
}

#[test]
fn one_line_sources_give_the_debian_bookworm_main_uri() {
    let cases = [
        ("deb http://mirror.example.invalid/debian/ bookworm main\n", Some("http://mirror.example.invalid/debian")),
        ("deb-src http://src.example.invalid/debian bookworm main\n", None),
        ("# deb http://old.example.invalid/debian bookworm main\n", None),
        ("deb http://sec.example.invalid/debian-security bookworm-security main\n", None),
        ("deb http://mirror.example.invalid/debian bookworm contrib\n", None),
        ("deb [signed-by=/usr/share/keyrings/vendor.gpg] http://vendor.example.invalid/deb bookworm main\n", None),
        (
            "deb https://vendor.example.invalid/apt cloud-sdk-bookworm main\n\
             deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://m.example.invalid/debian bookworm main contrib\n",
            Some("http://m.example.invalid/debian"),
        ),
    ];
    for (text, mirror) in cases {
        assert_eq!(fixture::mirror_in_one_line_sources(text).as_deref(), mirror, "{text}");
    }
}

#[test]
fn deb822_sources_give_the_debian_bookworm_main_uri() {
    let debian = "Types: deb\nURIs: http://mirror.example.invalid/debian/\nSuites: bookworm bookworm-updates\n\
                  Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
    let security = "Types: deb\nURIs: http://mirror.example.invalid/debian-security\nSuites: bookworm-security\n\
                    Components: main\n";
    let vendor = "Types: deb\nURIs: https://vendor.example.invalid/node\nSuites: nodistro\nComponents: main\n";
    let disabled =
        "Enabled: no\nTypes: deb\nURIs: http://off.example.invalid/debian\nSuites: bookworm\nComponents: main\n";
    let cases = [
        (
            format!("{security}\n{debian}"),
            Some("http://mirror.example.invalid/debian"),
        ),
        (format!("{vendor}\n# comment\n\n{security}"), None),
        (
            format!("{disabled}\n{debian}"),
            Some("http://mirror.example.invalid/debian"),
        ),
        (
            "Types: deb-src deb\nURIs:\n http://wrapped.example.invalid/debian\nSuites: bookworm\nComponents: main\n"
                .into(),
            Some("http://wrapped.example.invalid/debian"),
        ),
    ];
    for (text, mirror) in cases {
        assert_eq!(fixture::mirror_in_deb822_sources(&text).as_deref(), mirror, "{text}");
    }
}

#[test]
fn debian_description_gets_this_machines_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let description = fixture::debian_description(dir.path());
    let config = fs::read_to_string(description.join("config.xml")).unwrap();
    let mirror = fixture::debian_mirror();
    assert!(!mirror.is_empty() && !mirror.ends_with('/'), "mirror {mirror:?}");
    assert!(
        !config.contains(fixture::MIRROR_PLACEHOLDER),
        "placeholder left in {config}"
    );
    assert!(config.contains(&format!("<source path=\"{mirror}\">")), "{config}");
    let original = fs::read_to_string(fixture::fixtures_dir().join("debian-bookworm/config.xml")).unwrap();
    assert_eq!(config.replace(&mirror, fixture::MIRROR_PLACEHOLDER), original);
}

#[test]
fn kiwi_config_sets_xz_options_as_a_mapping() {
    // kiwi 11 reads `xz:` as a mapping; the old list form fails with
    // KiwiRuntimeConfigFormatError.
    let text = fs::read_to_string(fixture::kiwi_config()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    let xz = lines.iter().position(|line| *line == "xz:").expect("no xz: section");
    assert!(lines[xz + 1].trim_start().starts_with("options: "), "{text}");
    assert!(!fixture::kiwi_ng().is_empty());
}
