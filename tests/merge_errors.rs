//! The merge preview and derived builds refuse bad input with one clear
//! error that names the file or reference, and change nothing of the user's.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn run(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(args)
        .env("KIWI_STACKBUILD_HOME", home)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running kiwi-stackbuild")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const BASE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="merge-base">
    <description type="system"><author>A</author><contact>a@example.invalid</contact><specification>s</specification></description>
    <preferences><version>1.0.0</version><packagemanager>apt</packagemanager><type image="tbz"/></preferences>
    <repository type="apt-deb" distribution="bookworm" components="main"><source path="file:///srv/mirror"/></repository>
    <packages type="image"><package name="bash"/></packages>
    <packages type="bootstrap"><package name="usrmerge"/></packages>
</image>
"#;

fn derived(from: &str, extra: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="merge-child" derived_from="{from}">
    <preferences><version>2.0.0</version></preferences>
    {extra}
    <packages type="image"><package name="less"/></packages>
</image>
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

/// A stash of a tree that holds `BASE` as its /image/config.xml.
fn stash_base(tmp: &Path, home: &Path) {
    let root = tmp.join("base-root");
    write(&root.join("image"), "config.xml", BASE);
    write(&root.join("image"), "config.sh", "#!/bin/sh\necho base\n");
    write(&root.join("etc"), "os-release", "ID=debian\n");
    let out = run(home, &["stash", "--root", root.to_str().unwrap(), "--tag", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn merge_preview_writes_a_merged_description_from_a_stash_and_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("store");
    stash_base(tmp.path(), &home);
    let d = tmp.path().join("derived");
    write(&d, "config.xml", &derived("merge-base:1", ""));
    write(&d, "config.sh", "#!/bin/sh\necho derived\n");
    let out_dir = tmp.path().join("merged");
    let out = run(
        &home,
        &[
            "merge",
            "--description",
            d.to_str().unwrap(),
            "--output",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let merged = fs::read_to_string(out_dir.join("config.xml")).unwrap();
    assert!(
        merged.contains(r#"name="merge-child""#) && !merged.contains("derived_from="),
        "{merged}"
    );
    assert!(
        merged.contains(r#"<package name="bash"/>"#) && merged.contains(r#"<package name="less"/>"#),
        "{merged}"
    );
    // The merge is a complete description: the base's bootstrap section
    // stays (a build on an existing root drops it from kiwi-ng's copy).
    assert_eq!(
        merged
            .matches(r#"<packages type="bootstrap"><package name="usrmerge"/></packages>"#)
            .count(),
        1,
        "{merged}"
    );
    assert_eq!(merged.matches("bootstrap").count(), 1, "{merged}");
    assert_eq!(
        fs::read_to_string(out_dir.join("config.sh")).unwrap(),
        "#!/bin/sh\necho derived\n",
        "the derived file must win"
    );

    let base_dir = tmp.path().join("base-desc");
    write(&base_dir, "config.xml", BASE);
    let out_dir2 = tmp.path().join("merged2");
    let out = run(
        &home,
        &[
            "merge",
            "--description",
            d.to_str().unwrap(),
            "--output",
            out_dir2.to_str().unwrap(),
            "--base",
            base_dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(out_dir2.join("config.xml")).unwrap(),
        merged,
        "a directory base and the stash give the same merge"
    );
}

#[test]
fn bad_derived_input_is_one_error_naming_the_file_or_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("store");
    stash_base(tmp.path(), &home);
    let before = fs::read(home.join("index.json")).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "malformed",
            "<image name=\"x\" derived_from=\"merge-base:1\">\n  <packages>\n</image>\n".into(),
            "config.xml:3:",
        ),
        ("unknown-base", derived("no-such-base:1", ""), "no stash no-such-base:1"),
        (
            "bad-reference",
            derived("Not A Name", ""),
            "derived_from=\"Not A Name\"",
        ),
        ("unknown-element", derived("merge-base:1", "<bogus/>"), "config.xml:4"),
        (
            "user-without-name",
            derived("merge-base:1", "<users><user password=\"x\" home=\"/root\"/></users>"),
            "config.xml:4",
        ),
    ];
    for (name, text, want) in cases {
        let d = tmp.path().join(name);
        write(&d, "config.xml", &text);
        let out_dir = tmp.path().join(format!("{name}-out"));
        let out = run(
            &home,
            &[
                "merge",
                "--description",
                d.to_str().unwrap(),
                "--output",
                out_dir.to_str().unwrap(),
            ],
        );
        let err = stderr(&out);
        assert!(!out.status.success(), "{name}: merge passed");
        assert!(err.contains(want), "{name}: error does not say {want:?}:\n{err}");
        assert!(!out_dir.exists(), "{name}: output written");
        assert_eq!(
            fs::read_to_string(d.join("config.xml")).unwrap(),
            text,
            "{name}: the user's file changed"
        );
    }
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let out = run(
        &home,
        &[
            "merge",
            "--description",
            empty.to_str().unwrap(),
            "--output",
            tmp.path().join("e-out").to_str().unwrap(),
        ],
    );
    assert!(stderr(&out).contains("no KIWI description in"), "{}", stderr(&out));
    assert_eq!(fs::read(home.join("index.json")).unwrap(), before, "the store changed");
}

#[test]
fn a_base_without_a_stored_description_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("store");
    // A plain container image: one layer, no /image.
    let layout = tmp.path().join("plain");
    let tree = tmp.path().join("tree");
    write(&tree.join("etc"), "hostname", "plain\n");
    let umoci = std::env::var("UMOCI").unwrap_or_else(|_| "umoci".into());
    for args in [
        vec!["init", "--layout", layout.to_str().unwrap()],
        vec!["new", "--image", &format!("{}:plain", layout.display())],
        vec![
            "insert",
            "--image",
            &format!("{}:plain", layout.display()),
            tree.to_str().unwrap(),
            "/",
        ],
    ] {
        let out = Command::new(&umoci).args(&args).output().expect("running umoci");
        assert!(
            out.status.success(),
            "umoci {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let d = tmp.path().join("derived");
    let base = format!("oci:{}:plain", layout.display());
    write(&d, "config.xml", &derived(&base, ""));
    let out = run(
        &home,
        &[
            "merge",
            "--description",
            d.to_str().unwrap(),
            "--output",
            tmp.path().join("out").to_str().unwrap(),
        ],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains(&base) && err.contains("no /image/config.xml"), "{err}");
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn obs_references_resolve_to_staged_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("store");
    stash_base(tmp.path(), &home);
    let sources = tmp.path().join("SOURCES");
    let staged = sources.join("containers/_obsrepositories/kiwi/merge-base#1");
    fs::create_dir_all(staged.parent().unwrap()).unwrap();
    let out = run(
        &home,
        &["push", "merge-base:1", &format!("oci-archive:{}", staged.display())],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let d = tmp.path().join("derived");
    write(&d, "config.xml", &derived("obsrepositories:/kiwi/merge-base#1", ""));
    let run_obs = |out_dir: &Path, sources: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"));
        cmd.args(["merge", "--description"])
            .arg(&d)
            .arg("--output")
            .arg(out_dir);
        cmd.env("KIWI_STACKBUILD_HOME", &home).env("RUST_BACKTRACE", "0");
        match sources {
            Some(s) => cmd.env("KIWI_STACKBUILD_OBS_SOURCES", s),
            None => cmd.env_remove("KIWI_STACKBUILD_OBS_SOURCES"),
        };
        cmd.output().unwrap()
    };
    let merged = tmp.path().join("merged");
    let out = run_obs(&merged, Some(&sources));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fs::read_to_string(merged.join("config.xml"))
        .unwrap()
        .contains(r#"name="merge-child""#));

    if !Path::new("/.buildenv").exists() {
        let out = run_obs(&tmp.path().join("outside"), None);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("only be used inside an OBS build"),
            "{}",
            stderr(&out)
        );
    }
    let missing = tmp.path().join("missing");
    write(&missing, "config.xml", &derived("obsrepositories:/kiwi/none#1", ""));
    let out = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(["merge", "--description"])
        .arg(&missing)
        .arg("--output")
        .arg(tmp.path().join("m-out"))
        .env("KIWI_STACKBUILD_HOME", &home)
        .env("KIWI_STACKBUILD_OBS_SOURCES", &sources)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(stderr(&out).contains("OBS staged no image at"), "{}", stderr(&out));
}
