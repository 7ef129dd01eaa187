//! Tests over the fixture descriptions in fixtures/descriptions/.

use std::path::{Path, PathBuf};

use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/descriptions")
}

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kiwi"))
        .collect();
    files.sort();
    files
}

fn merge_cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures().join("merge"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn parse(path: &Path) -> Document {
    Document::parse_file(path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn corpus_round_trips() {
    let files = corpus();
    assert!(files.len() >= 20, "only {} corpus descriptions", files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = parse(&path);
        assert_eq!(doc.to_string(), text, "{}", path.display());
        let again = Document::parse_str(&doc.to_string(), "again").unwrap();
        assert_eq!(again, doc, "{}", path.display());
        assert!(
            doc.image_name().is_some() && doc.package_manager().is_some(),
            "{}",
            path.display()
        );
    }
}

#[test]
fn corpus_takes_a_derived_description() {
    let derived = parse(&fixtures().join("corpus-derived.kiwi"));
    for path in corpus() {
        let base = parse(&path);
        let merged = merge(&base, &derived).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let text = merged.to_string();
        let reparsed = Document::parse_str(&text, "merged").unwrap();
        assert_eq!(reparsed.to_string(), text, "{}", path.display());
        assert_eq!(merged.image_name(), Some("derived-workstation"));
        assert_eq!(merged.derived_from(), None);
        assert_eq!(merged.package_manager(), base.package_manager(), "{}", path.display());
        assert_eq!(merged.distribution(), base.distribution(), "{}", path.display());
        assert!(
            text.contains("<!-- OBS-Profiles: @BUILD_FLAVOR@ -->"),
            "{}",
            path.display()
        );
        assert!(text.contains("<package name=\"tmux\"/>"), "{}", path.display());
        // Bootstrap sections of both stay: the merge builds from scratch too.
        let bootstrap = |t: &str| t.matches("<packages type=\"bootstrap\"").count();
        assert_eq!(
            bootstrap(&text),
            bootstrap(&base.to_string()) + bootstrap(&derived.to_string()),
            "{}",
            path.display()
        );
        assert_eq!(merged.profile_names(), base.profile_names(), "{}", path.display());
    }
}

/// Set UPDATE_EXPECTED=1 to rewrite expected.kiwi files after a deliberate
/// change, then review the diff.
#[test]
fn merge_cases_give_the_expected_description() {
    let cases = merge_cases();
    assert!(!cases.is_empty());
    for dir in cases {
        let base = parse(&dir.join("base.kiwi"));
        let derived = parse(&dir.join("derived.kiwi"));
        let merged = merge(&base, &derived).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let expected_path = dir.join("expected.kiwi");
        if std::env::var_os("UPDATE_EXPECTED").is_some() {
            merged.write_to(&expected_path).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap();
        assert_eq!(merged.to_string(), expected, "{}", dir.display());
    }
}

#[test]
fn invalid_derived_fixtures_are_rejected_with_their_line() {
    let cases = [
        (
            "user-without-name.kiwi",
            "user-without-name.kiwi:12: <user> needs a name",
        ),
        (
            "unknown-element.kiwi",
            "unknown-element.kiwi:9: <pakages> is not a KIWI element",
        ),
        (
            "repository-without-source.kiwi",
            "repository-without-source.kiwi:7: <repository> needs <source path=\"...\"/>",
        ),
        (
            "not-derived.kiwi",
            "not-derived.kiwi:3: <image> needs derived_from (the image to build on)",
        ),
    ];
    for (file, expected) in cases {
        let doc = parse(&fixtures().join("invalid").join(file));
        let error = check_derived(&doc).unwrap_err().to_string();
        assert!(error.ends_with(expected), "{file}: {error}");
    }
}

#[test]
fn write_to_replaces_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("config.xml");
    std::fs::write(&target, "old").unwrap();
    let doc = parse(&corpus()[0]);
    doc.write_to(&target).unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), doc.to_string());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["config.xml"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let fresh = dir.path().join("new.kiwi");
        doc.write_to(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o644);
    }
}

#[test]
fn corpus_facts() {
    let cases = [
        ("archlinux-tbz.kiwi", "archlinux-rootfs", "pacman", "2024.11.1", None),
        (
            "debian-12-container.kiwi",
            "debian-bookworm-container",
            "apt",
            "12.8",
            Some("bookworm"),
        ),
        (
            "debian-12-oem.kiwi",
            "debian-bookworm-disk",
            "apt",
            "12.8.0",
            Some("bookworm"),
        ),
        (
            "debian-13-tbz.kiwi",
            "debian-trixie-rootfs",
            "apt",
            "13.0.0",
            Some("trixie"),
        ),
        ("el9-oem-lvm.kiwi", "el9-server", "dnf4", "9.4.0", None),
        (
            "fedora-40-cloud.kiwi",
            "Fedora-Cloud-Base",
            "dnf4",
            "40",
            Some("fedora-40"),
        ),
        (
            "fedora-40-live.kiwi",
            "Fedora-Workstation-Live",
            "dnf4",
            "40.0.1",
            Some("fedora-40"),
        ),
        (
            "fedora-41-container.kiwi",
            "fedora-container-base",
            "dnf5",
            "41",
            Some("fedora-41"),
        ),
        (
            "leap-15.6-container.kiwi",
            "leap-15.6-base-container",
            "zypper",
            "15.6",
            Some("opensuse-leap-15.6"),
        ),
        (
            "leap-15.6-exported.kiwi",
            "leap-15.6-exported",
            "zypper",
            "15.6.1",
            Some("opensuse-leap-15.6"),
        ),
        (
            "leap-15.6-jeos.kiwi",
            "Leap-15.6-JeOS",
            "zypper",
            "15.6.0",
            Some("opensuse-leap-15.6"),
        ),
        (
            "leap-15.6-live.kiwi",
            "Leap-15.6-Live-Rescue",
            "zypper",
            "15.6.0",
            Some("opensuse-leap-15.6"),
        ),
        (
            "leap-15.6-workstation-users.kiwi",
            "leap-workstation",
            "zypper",
            "15.6.3",
            Some("opensuse-leap-15.6"),
        ),
        (
            "leap-micro-6.0-selfinstall.kiwi",
            "openSUSE-Leap-Micro",
            "zypper",
            "6.0",
            Some("opensuse-leap-micro-6.0"),
        ),
        (
            "sle-15-sp6-multiarch.kiwi",
            "SLES15-SP6-Minimal",
            "zypper",
            "15.6.0",
            Some("sle-15-sp6"),
        ),
        (
            "slowroll-vagrant.kiwi",
            "slowroll-vagrant",
            "zypper",
            "1.2.0",
            Some("opensuse-slowroll"),
        ),
        (
            "tumbleweed-container.kiwi",
            "opensuse-tumbleweed-image",
            "zypper",
            "1.0.0",
            None,
        ),
        (
            "tumbleweed-kis.kiwi",
            "tumbleweed-netboot",
            "zypper",
            "3.1.0",
            Some("opensuse-tumbleweed"),
        ),
        (
            "tumbleweed-minimalvm.kiwi",
            "openSUSE-Tumbleweed-Minimal-VM",
            "zypper",
            "1.0.0",
            Some("opensuse-tumbleweed"),
        ),
        (
            "tumbleweed-oci-tools.kiwi",
            "tumbleweed-toolbox",
            "zypper",
            "2.4.1",
            Some("opensuse-tumbleweed"),
        ),
        (
            "tumbleweed-rootfs-tbz.kiwi",
            "tumbleweed-rootfs",
            "zypper",
            "0.9.3",
            Some("opensuse-tumbleweed"),
        ),
        (
            "tumbleweed-wsl-crlf.kiwi",
            "tumbleweed-wsl",
            "zypper",
            "1.5.0",
            Some("opensuse-tumbleweed"),
        ),
        (
            "ubuntu-22.04-container.kiwi",
            "ubuntu-jammy-base",
            "apt",
            "22.04.5",
            Some("jammy"),
        ),
        (
            "ubuntu-24.04-oem.kiwi",
            "ubuntu-noble-server",
            "apt",
            "24.04.1",
            Some("noble"),
        ),
    ];
    assert_eq!(cases.len(), corpus().len(), "every corpus file has a row");
    for (file, name, package_manager, version, distribution) in cases {
        let doc = parse(&fixtures().join("corpus").join(file));
        let facts = (
            doc.image_name(),
            doc.package_manager(),
            doc.version(),
            doc.distribution(),
        );
        let expected = (
            Some(name),
            Some(package_manager.into()),
            Some(version.into()),
            distribution.map(Into::into),
        );
        assert_eq!(facts, expected, "{file}");
        assert_eq!(doc.author().as_deref(), Some("Example Builders"), "{file}");
    }
}
