//! Real kiwi-ng validates the descriptions we write: every corpus
//! description, each one merged with fixtures/descriptions/corpus-derived.kiwi,
//! and every merge case under fixtures/descriptions/merge/.
//!
//! Each is written to a temporary directory as config.xml and checked with
//! `kiwi-ng [--profile P]... image info --description DIR`. Merged results
//! are checked once per profile when they have profiles (KIWI needs a
//! profile selection to find types that live in profiled `<preferences>`);
//! the corpus itself once with all its profiles selected. `image info` loads the
//! description as a build would: XSLT upgrade, RelaxNG and Schematron
//! validation, profile and type selection, and a check that a repository is
//! configured. It neither needs root nor touches the network.
//!
//! kiwi-ng comes from `KIWI_NG` or PATH. A missing kiwi-ng fails the test,
//! unless `KIWI_STACKBUILD_SKIP_KIWI=1`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use kiwi_stackbuild::description::{find, merge, Document};

/// One description to validate, with the files that must sit beside it.
struct Case {
    name: String,
    doc: Document,
    beside: Vec<PathBuf>,
    /// One run per profile, else one run with all profiles selected.
    per_profile: bool,
}

/// One kiwi-ng run: a case and the profiles to select.
struct Run<'a> {
    case: &'a Case,
    profiles: Vec<String>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/descriptions")
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    entries
}

fn parse(path: &Path) -> Document {
    Document::parse_file(path).unwrap_or_else(|e| panic!("{e}"))
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let derived = parse(&fixtures().join("corpus-derived.kiwi"));
    for path in sorted_entries(&fixtures().join("corpus")) {
        let base = parse(&path);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let merged = merge(&base, &derived).unwrap_or_else(|e| panic!("{e}"));
        cases.push(Case {
            name: format!("corpus/{name}"),
            doc: base,
            beside: vec![],
            per_profile: false,
        });
        let name = format!("corpus/{name} + corpus-derived.kiwi");
        cases.push(Case {
            name,
            doc: merged,
            beside: vec![],
            per_profile: true,
        });
    }
    for dir in sorted_entries(&fixtures().join("merge")) {
        let merged =
            merge(&parse(&dir.join("base.kiwi")), &parse(&dir.join("derived.kiwi"))).unwrap_or_else(|e| panic!("{e}"));
        let beside = sorted_entries(&dir)
            .into_iter()
            .filter(|p| p.extension().is_none_or(|e| e != "kiwi"))
            .collect();
        let name = format!("merge/{}", dir.file_name().unwrap().to_string_lossy());
        cases.push(Case {
            name,
            doc: merged,
            beside,
            per_profile: true,
        });
    }
    cases
}

fn runs(cases: &[Case]) -> Vec<Run<'_>> {
    let mut runs = Vec::new();
    for case in cases {
        let profiles = case.doc.profile_names();
        if profiles.is_empty() || !case.per_profile {
            runs.push(Run { case, profiles });
        } else {
            runs.extend(profiles.into_iter().map(|p| Run {
                case,
                profiles: vec![p],
            }));
        }
    }
    runs
}

/// The kiwi-ng to run, or `None` when there is none to be had.
fn kiwi_ng() -> Option<OsString> {
    if let Some(path) = std::env::var_os("KIWI_NG") {
        return Some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("kiwi-ng"))
        .find(|p| p.is_file())
        .map(Into::into)
}

fn image_info_args(profiles: &[String], dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    for profile in profiles {
        args.extend(["--profile".into(), profile.into()]);
    }
    args.extend(["image".into(), "info".into(), "--description".into(), dir.into()]);
    args
}

/// Writes the run's description to a fresh directory and runs kiwi-ng on it.
fn validate(kiwi: &OsString, run: &Run) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("config.xml");
    run.case.doc.write_to(&config).map_err(|e| format!("{e:#}"))?;
    for file in &run.case.beside {
        std::fs::copy(file, dir.path().join(file.file_name().unwrap())).map_err(|e| e.to_string())?;
    }
    assert_eq!(find(dir.path()).unwrap(), config);
    let output = Command::new(kiwi)
        .args(image_info_args(&run.profiles, dir.path()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", kiwi.to_string_lossy()))?;
    if output.status.success() {
        return Ok(());
    }
    let log = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(format!("{}\n--- description ---\n{}", tail.join("\n"), run.case.doc))
}

/// Runs `validate` over `runs` on all cores; returns the failures.
fn validate_all(kiwi: &OsString, runs: &[Run]) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(run) = runs.get(next.fetch_add(1, Ordering::SeqCst)) {
                    if let Err(error) = validate(kiwi, run) {
                        let message = format!("{} with profiles {:?}:\n{error}", run.case.name, run.profiles);
                        failures.lock().unwrap().push(message);
                    }
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

/// The kiwi-ng to use, or `None` when the test may be skipped.
fn kiwi_or_skip() -> Option<OsString> {
    match kiwi_ng() {
        Some(kiwi) => Some(kiwi),
        None if std::env::var("KIWI_STACKBUILD_SKIP_KIWI").as_deref() == Ok("1") => {
            eprintln!("kiwi-ng not found; skipped because KIWI_STACKBUILD_SKIP_KIWI=1");
            None
        }
        None => panic!("kiwi-ng not found on PATH and KIWI_NG is not set (set KIWI_STACKBUILD_SKIP_KIWI=1 to skip)"),
    }
}

#[test]
fn kiwi_accepts_corpus_and_merged_descriptions() {
    let Some(kiwi) = kiwi_or_skip() else { return };
    let cases = cases();
    let runs = runs(&cases);
    let started = Instant::now();
    let failures = validate_all(&kiwi, &runs);
    eprintln!(
        "kiwi-ng validated {} descriptions in {} runs in {:.1?}",
        cases.len(),
        runs.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} kiwi-ng runs failed:\n\n{}",
        failures.len(),
        runs.len(),
        failures.join("\n\n")
    );
}

/// The harness must see kiwi-ng fail, or the test above proves nothing.
#[test]
fn kiwi_rejects_an_invalid_description() {
    let Some(kiwi) = kiwi_or_skip() else { return };
    let text = std::fs::read_to_string(fixtures().join("corpus/tumbleweed-rootfs-tbz.kiwi")).unwrap();
    let broken = text.replace("<type image=\"tbz\"/>", "<type image=\"tbz\"/><no-such-preference/>");
    assert_ne!(broken, text);
    let doc = Document::parse_str(&broken, "broken").unwrap();
    let case = Case {
        name: "broken".into(),
        doc,
        beside: vec![],
        per_profile: false,
    };
    let run = Run {
        case: &case,
        profiles: vec![],
    };
    let error = validate(&kiwi, &run).expect_err("kiwi-ng accepted a broken description");
    assert!(error.contains("KiwiDescriptionInvalid"), "{error}");
}

#[test]
fn image_info_argv() {
    let dir = Path::new("/tmp/d");
    let cases: [(&[&str], &[&str]); 3] = [
        (&[], &["image", "info", "--description", "/tmp/d"]),
        (
            &["Disk"],
            &["--profile", "Disk", "image", "info", "--description", "/tmp/d"],
        ),
        (
            &["A", "B"],
            &[
                "--profile",
                "A",
                "--profile",
                "B",
                "image",
                "info",
                "--description",
                "/tmp/d",
            ],
        ),
    ];
    for (profiles, expected) in cases {
        let profiles: Vec<String> = profiles.iter().map(|p| p.to_string()).collect();
        let expected: Vec<OsString> = expected.iter().map(OsString::from).collect();
        assert_eq!(image_info_args(&profiles, dir), expected);
    }
}

/// The installed kiwi-ng's own option lists are read from its `--help`, and
/// kiwi 11.1's match the built-in fallback lists.
#[test]
fn kiwi_ng_help_gives_the_option_lists() {
    use kiwi_stackbuild::tools::kiwi::{version, Options};
    if std::env::var_os("KIWI_STACKBUILD_SKIP_KIWI").is_some() {
        eprintln!("KIWI_STACKBUILD_SKIP_KIWI is set: not checking kiwi-ng's options");
        return;
    }
    let version = version().expect("kiwi-ng's version");
    for build in [true, false] {
        let installed = Options::read_installed(build, &version).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(installed.source, format!("kiwi-ng {version}"));
        let mut builtin = Options::builtin(build).options;
        if !build {
            // kiwi-ng lists --root, which we set ourselves.
            builtin.insert(0, ("--root".to_string(), true));
        }
        if version.starts_with("11.1.") {
            assert_eq!(installed.options, builtin, "{}", installed.command);
        } else {
            assert!(installed.options.iter().any(|(n, v)| n == "--target-dir" && *v));
        }
    }
}
