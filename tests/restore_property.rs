//! Property: however a root tree looks and however it changes, every tag of
//! a chain of delta stashes restores exactly the tree it was stashed from.
//!
//! A case (tests/common/chain.rs) is a random first tree and up to six
//! random steps of changes: new files, directories, symlinks, fifos and
//! device nodes; deletions of files and whole subtrees; every change of type
//! (a symlink to a directory replaced by a directory with files in it
//! among them); hard links added and broken; modes with setuid, setgid and
//! sticky bits; owners; `user.*` and `security.capability` xattrs; mtimes
//! to the nanosecond, some changing only in the nanoseconds; content changed
//! in place at the same size. After each step the tree is stashed with the
//! built binary under one name, a new tag per step, so each stash is one
//! delta layer on the one before. Then every tag is restored into a fresh
//! directory and compared entry by entry with the snapshot of the source
//! taken when that tag was stashed: type, content hash, mode, owner,
//! symlink target, device numbers, xattrs, hard-link groups and mtime to
//! the nanosecond. The root directory itself is not compared: a stash does
//! not store it (its layers hold the entries below the root) and a restore
//! creates it. Stashing must leave the source as it was, and tag N must have
//! N+1 layers.
//!
//! A failure is shrunk to a minimal chain and printed as shell-like steps,
//! with the differences per tag, the seed to replay it, and whether the
//! chain also fails when the store's tree cache is removed before each stash.
//!
//! Runs as root. Environment:
//! - `KIWI_STACKBUILD_PROPTEST_CASES`: how many cases (default 96, about 10 s);
//! - `KIWI_STACKBUILD_PROPTEST_AVOID`: changes to leave out, to look past a
//!   known bug: a comma-separated list of `nsec`, `dev`, `dirlink`,
//!   `same-mtime`, `node-links`, `odd-xattrs`, `slash-link`,
//!   `newline-xattrs`, `dir-xattrs` (see `chain::Avoid`); by default
//!   `same-mtime`, which rsync's quick check cannot see (set it empty to
//!   leave nothing out);
//! - `KIWI_STACKBUILD_PROPTEST_UNPACKER`: `builtin` (default) or `umoci`;
//! - `PROPTEST_RNG_SEED`: the seed of a run to replay;
//!   `PROPTEST_MAX_SHRINK_ITERS`, `PROPTEST_MAX_SHRINK_TIME` (ms): how long
//!   proptest shrinks (default 2000 steps, 45 s); a last pass then drops
//!   steps and changes for up to 30 s more.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::chain::change::{show, Change};
use common::chain::{self, Avoid, Case};
use common::images::try_restore_with;
use common::tree::{snapshot, snapshot_nanos, tree_diff, Snapshot};
use kiwi_stackbuild::restore::Unpacker;
use kiwi_stackbuild::store::Store;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

const CASES_ENV: &str = "KIWI_STACKBUILD_PROPTEST_CASES";
const AVOID_ENV: &str = "KIWI_STACKBUILD_PROPTEST_AVOID";

/// The changes left out. By default only one: rewriting a file in place at
/// the same size and then setting its mtime back to the nanosecond. A stash
/// finds changes by rsync's quick check (type, size, mtime, owner, mode,
/// xattrs, hard-link names), which cannot see that, as the README says.
fn avoided() -> String {
    std::env::var(AVOID_ENV).unwrap_or_else(|_| "same-mtime".to_string())
}
const UNPACKER_ENV: &str = "KIWI_STACKBUILD_PROPTEST_UNPACKER";
const DEFAULT_CASES: u32 = 96;
/// proptest's shrinking stops after this many steps or this time...
const DEFAULT_SHRINK_ITERS: u32 = 2000;
const DEFAULT_SHRINK_TIME: Duration = Duration::from_secs(45);
/// ...and [`minimize`] after this time.
const MINIMIZE_TIME: Duration = Duration::from_secs(30);
/// The stash name every case uses; tags are `s0`, `s1`, ...
const NAME: &str = "prop";
/// The store's tree cache (src/treecache.rs).
const TREE_CACHE: &str = ".kiwi-stackbuild-trees";
/// How many differences a report shows per run.
const SHOWN: usize = 40;

#[test]
fn every_tag_of_a_delta_chain_restores_its_tree() {
    let options = Options::from_env();
    let (config, seed) = config(options.cases);
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    let made = RefCell::new(BTreeMap::<String, usize>::new());
    let result = runner.run(&chain::case(), |case| {
        let run = run_case(Steps::Ops(&case), &options, Cache::Kept).map_err(TestCaseError::reject)?;
        let mut made = made.borrow_mut();
        for kind in run.changes.iter().flatten().map(Change::kind) {
            *made.entry(kind.to_string()).or_default() += 1;
        }
        for change in &run.type_changes {
            *made.entry(format!("type {change}")).or_default() += 1;
        }
        match run.failures.len() {
            0 => Ok(()),
            n => Err(TestCaseError::fail(format!("{n} differences"))),
        }
    });
    match result {
        Ok(()) => eprintln!(
            "{} cases passed in {:.1?} (seed {seed}); changes made: {:?}",
            options.cases,
            started.elapsed(),
            made.borrow()
        ),
        Err(TestError::Fail(_, case)) => panic!("{}", report(&minimize(&case, &options), &options, seed)),
        Err(TestError::Abort(why)) => panic!("proptest gave up (seed {seed}): {why}"),
    }
}

/// The control: a `cp -a` copy of the source after every step compares
/// equal, so the snapshots and the comparison report no difference where
/// there is none, whatever the chain did (and a failure of the property is
/// the product's).
#[test]
fn a_faithful_copy_shows_no_difference() {
    let options = Options::from_env();
    let (config, seed) = config((options.cases / 4).max(8));
    let mut runner = TestRunner::new(config);
    let result = runner.run(&chain::case(), |case| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        chain::make_root(&root);
        for (step, ops) in case.all_steps().into_iter().enumerate() {
            let lines = chain::run_step(&root, ops, step, &options.avoid).lines;
            let copy = tmp.path().join(format!("copy-{step}"));
            let status = Command::new("cp").arg("-a").arg(&root).arg(&copy).status().unwrap();
            assert!(status.success(), "cp -a failed");
            let diffs = tree_diff(&snapshot_nanos(&root), &snapshot_nanos(&copy));
            if !diffs.is_empty() {
                return Err(TestCaseError::fail(format!(
                    "after step {step} ({}): {}",
                    lines.join("; "),
                    diffs.join("; ")
                )));
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("the comparison itself is wrong (seed {seed}): {e}");
    }
}

#[test]
fn snapshots_tell_nanoseconds_apart_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let set = |nsec| {
        let t = rustix::fs::Timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: nsec,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(rustix::fs::CWD, &file, &times, rustix::fs::AtFlags::empty()).unwrap();
    };
    set(1);
    let (seconds, nanos) = (snapshot(tmp.path()), snapshot_nanos(tmp.path()));
    set(2);
    assert!(tree_diff(&seconds, &snapshot(tmp.path())).is_empty());
    assert_eq!(
        tree_diff(&nanos, &snapshot_nanos(tmp.path())),
        ["\"f\": mtime: expected 1500000000.000000001, found 1500000000.000000002"]
    );
}

/// What the environment asks for.
struct Options {
    cases: u32,
    avoid: Avoid,
    unpacker: Unpacker,
}

impl Options {
    fn from_env() -> Options {
        let cases = match std::env::var(CASES_ENV) {
            Ok(n) => n
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{CASES_ENV}={n:?} is not a number")),
            Err(_) => DEFAULT_CASES,
        };
        let avoid = Avoid::parse(&avoided()).unwrap_or_else(|e| panic!("{AVOID_ENV}: {e}"));
        let unpacker = match std::env::var(UNPACKER_ENV).as_deref() {
            Err(_) | Ok("") | Ok("builtin") => Unpacker::Builtin,
            Ok("umoci") => Unpacker::Umoci,
            Ok(other) => panic!("{UNPACKER_ENV}={other:?}: use builtin or umoci"),
        };
        Options { cases, avoid, unpacker }
    }
}

/// proptest's configuration for `cases` cases, with a seed that is printed
/// so a run can be replayed (`PROPTEST_RNG_SEED`), and no regression files.
fn config(cases: u32) -> (Config, u64) {
    // Config::default() reads the PROPTEST_* variables.
    let mut config = Config {
        cases,
        failure_persistence: None,
        max_global_rejects: cases.saturating_mul(50).max(1024),
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_MAX_SHRINK_ITERS").is_none() {
        config.max_shrink_iters = DEFAULT_SHRINK_ITERS;
    }
    if std::env::var_os("PROPTEST_MAX_SHRINK_TIME").is_none() {
        config.max_shrink_time = DEFAULT_SHRINK_TIME.as_millis() as u32;
    }
    let seed = match config.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    config.rng_seed = RngSeed::Fixed(seed);
    (config, seed)
}

/// Whether the store keeps its tree cache between stashes.
#[derive(Clone, Copy, PartialEq)]
enum Cache {
    Kept,
    Removed,
}

/// The steps of a case: ops that pick their targets as they run, or the
/// changes a run of them made.
#[derive(Clone, Copy)]
enum Steps<'a> {
    Ops(&'a Case),
    Changes(&'a [Vec<Change>]),
}

impl Steps<'_> {
    fn len(self) -> usize {
        match self {
            Steps::Ops(case) => case.all_steps().len(),
            Steps::Changes(steps) => steps.len(),
        }
    }

    fn run(self, root: &Path, step: usize, avoid: &Avoid) -> chain::Step {
        match self {
            Steps::Ops(case) => chain::run_step(root, case.all_steps()[step], step, avoid),
            Steps::Changes(steps) => chain::replay_step(root, &steps[step], step, avoid),
        }
    }
}

/// What one case did and every way it went wrong.
struct Run {
    /// The changes of each step.
    changes: Vec<Vec<Change>>,
    /// Per tag, the lines of its step.
    transcript: Vec<(String, Vec<String>)>,
    /// One line per difference or error, prefixed with the tag.
    failures: Vec<String>,
    /// Every change of an entry's type from one step to the next.
    type_changes: Vec<String>,
}

fn tag(step: usize) -> String {
    format!("s{step}")
}

/// Makes the steps one by one, stashing after each, then restores every
/// tag and compares. `Err` when the case hits a change [`Avoid`] rules out.
fn run_case(steps: Steps<'_>, options: &Options, cache: Cache) -> Result<Run, String> {
    let tmp = tempfile::tempdir().unwrap();
    let (root, home) = (tmp.path().join("root"), tmp.path().join("store"));
    chain::make_root(&root);
    let mut run = Run {
        changes: Vec::new(),
        transcript: Vec::new(),
        failures: Vec::new(),
        type_changes: Vec::new(),
    };
    let mut taken: Vec<Snapshot> = Vec::new();
    // The root directory itself, which the snapshots leave out.
    let mut roots = Vec::new();
    for step in 0..steps.len() {
        let tag = tag(step);
        let mut done = steps.run(&root, step, &options.avoid);
        let source = snapshot_nanos(&root);
        roots.push(root_meta(&root));
        if let Some(path) = taken
            .last()
            .and_then(|before| chain::dirlink_became_dir(before, &source))
        {
            if options.avoid.dirlink {
                return Err(format!("{} was a symlink to a directory", show(&path)));
            }
            let path = show(&path);
            done.lines
                .push(format!("(so {path}, a symlink to a directory, became a directory)"));
        }
        if let Some(before) = taken.last() {
            run.type_changes.extend(chain::type_changes(before, &source));
        }
        run.changes.push(done.changes);
        run.transcript.push((tag.clone(), done.lines));
        if cache == Cache::Removed {
            remove_tree_cache(&home);
        }
        if let Err(e) = stash(&home, &root, &tag) {
            run.failures.push(format!("{tag}: stash failed: {e}"));
            return Ok(run);
        }
        let changed = tree_diff(&source, &snapshot_nanos(&root));
        run.failures.extend(
            changed
                .iter()
                .map(|d| format!("{tag}: stashing changed the source: {d}")),
        );
        taken.push(source);
    }
    // A stash adds a layer exactly when the tree differs from the one before.
    let mut expected = Vec::new();
    for (step, source) in taken.iter().enumerate() {
        let grew = step == 0 || !tree_diff(&taken[step - 1], source).is_empty() || roots[step - 1] != roots[step];
        expected.push(expected.last().copied().unwrap_or(0) + usize::from(grew));
    }
    run.failures.extend(layer_count_failures(&home, &expected));
    for (step, source) in taken.iter().enumerate() {
        let tag = tag(step);
        let out = tmp.path().join(format!("restored-{tag}"));
        match try_restore_with(&home, &format!("{NAME}:{tag}"), &out, options.unpacker) {
            Ok(()) => {
                let diffs = tree_diff(source, &snapshot_nanos(&out));
                run.failures.extend(diffs.iter().map(|d| format!("{tag}: {d}")));
            }
            Err(e) => run.failures.push(format!("{tag}: restore failed: {e:#}")),
        }
    }
    Ok(run)
}

/// What a stash records of the root directory itself: mtime, mode, owner.
fn root_meta(root: &Path) -> (i64, i64, u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(root).unwrap();
    (m.mtime(), m.mtime_nsec(), m.mode(), m.uid(), m.gid())
}

/// Stashes `root` as `prop:TAG` with the built binary.
fn stash(home: &Path, root: &Path, tag: &str) -> Result<(), String> {
    let out = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(["stash", "--root"])
        .arg(root)
        .args(["--container-name", NAME, "--tag", tag])
        .env("KIWI_STACKBUILD_HOME", home)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .map_err(|e| format!("running kiwi-stackbuild: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn remove_tree_cache(home: &Path) {
    match std::fs::remove_dir_all(home.join(TREE_CACHE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("removing the tree cache: {e}"),
        _ => {}
    }
}

/// Tag N must have `expected[N]` layers: each stash adds one delta, unless
/// the tree is the same as at the stash before.
fn layer_count_failures(home: &Path, expected: &[usize]) -> Vec<String> {
    let store = Store::new(home);
    let index = match store.index() {
        Ok(index) => index,
        Err(e) => return vec![format!("reading the store's index: {e:#}")],
    };
    let mut failures = Vec::new();
    for (step, &want) in expected.iter().enumerate() {
        let key = format!("{NAME}:{}", tag(step));
        let layers = store
            .find(&index, &key)
            .ok_or_else(|| "not in the index".to_string())
            .and_then(|d| {
                use kiwi_stackbuild::oci::DescriptorExt;
                d.sha256()
                    .and_then(|digest| store.manifest(&digest))
                    .map_err(|e| format!("{e:#}"))
            })
            .map(|m| m.layers().len());
        match layers {
            Ok(n) if n == want => {}
            Ok(n) => failures.push(format!("{key}: {n} layers, expected {want}")),
            Err(e) => failures.push(format!("{key}: {e}")),
        }
    }
    failures
}

/// The changes of a failing case, with steps and changes taken out while
/// it still fails. proptest shrinks the ops of a case one after the other,
/// and an op left out changes what later ops pick; changes have their
/// targets fixed, so taking one out leaves the others as they were.
fn minimize(case: &Case, options: &Options) -> Vec<Vec<Change>> {
    let deadline = Instant::now() + MINIMIZE_TIME;
    let Ok(first) = run_case(Steps::Ops(case), options, Cache::Kept) else {
        return Vec::new();
    };
    let mut steps = first.changes;
    let fails = |steps: &[Vec<Change>]| matches!(run_case(Steps::Changes(steps), options, Cache::Kept), Ok(run) if !run.failures.is_empty());
    'smaller: while Instant::now() < deadline {
        for smaller in smaller_steps(&steps) {
            if Instant::now() >= deadline {
                break 'smaller;
            }
            if fails(&smaller) {
                steps = smaller;
                continue 'smaller;
            }
        }
        break;
    }
    steps
}

/// `steps` without one of its steps, or without one change of a step.
fn smaller_steps(steps: &[Vec<Change>]) -> Vec<Vec<Vec<Change>>> {
    let mut smaller = Vec::new();
    for step in 0..steps.len() {
        let mut fewer = steps.to_vec();
        fewer.remove(step);
        smaller.push(fewer);
    }
    for step in 0..steps.len() {
        for change in 0..steps[step].len() {
            let mut fewer = steps.to_vec();
            fewer[step].remove(change);
            smaller.push(fewer);
        }
    }
    smaller
}

/// The failure report of a minimal chain: run again to print its steps and
/// differences, and once more without the tree cache.
fn report(steps: &[Vec<Change>], options: &Options, seed: u64) -> String {
    let mut text = String::new();
    let avoid = avoided();
    writeln!(
        text,
        "a restored tag differs from its source; minimal chain below.\n\
         replay: PROPTEST_RNG_SEED={seed} {AVOID_ENV}={avoid:?} cargo test --test restore_property\n"
    )
    .unwrap();
    let kept = match run_case(Steps::Changes(steps), options, Cache::Kept) {
        Ok(run) => run,
        Err(rejected) => return format!("{text}the minimal chain is now rejected ({rejected}): {steps:?}"),
    };
    writeln!(text, "chain (stash {NAME}:TAG after each step):").unwrap();
    for (tag, lines) in &kept.transcript {
        let first = if tag == "s0" {
            " (first stash, on an empty tree)"
        } else {
            ""
        };
        writeln!(text, "  {tag}{first}:").unwrap();
        if lines.is_empty() {
            writeln!(text, "    (no change)").unwrap();
        }
        for line in lines {
            writeln!(text, "    {line}").unwrap();
        }
    }
    if kept.failures.is_empty() {
        writeln!(
            text,
            "\nthe minimal chain passed when run again: the failure is not repeatable"
        )
        .unwrap();
        return text;
    }
    writeln!(
        text,
        "\ndifferences (expected: the source when the tag was stashed; found: its restore):"
    )
    .unwrap();
    list_failures(&mut text, &kept.failures);
    let removed = run_case(Steps::Changes(steps), options, Cache::Removed).map(|run| run.failures);
    match removed {
        Ok(failures) if failures.is_empty() => writeln!(
            text,
            "\nwith the tree cache ({TREE_CACHE}) removed before each stash, every tag restores: the cache is wrong"
        ),
        Ok(failures) if what_differs(&failures) == what_differs(&kept.failures) => writeln!(
            text,
            "\nwith the tree cache removed before each stash, the same entries differ"
        ),
        Ok(failures) => {
            writeln!(
                text,
                "\nwith the tree cache removed before each stash, these differ instead:"
            )
            .unwrap();
            list_failures(&mut text, &failures);
            Ok(())
        }
        Err(rejected) => writeln!(text, "\n(without the tree cache the case is rejected: {rejected})"),
    }
    .unwrap();
    text
}

fn list_failures(text: &mut String, failures: &[String]) {
    for failure in failures.iter().take(SHOWN) {
        writeln!(text, "  {failure}").unwrap();
    }
    if failures.len() > SHOWN {
        writeln!(text, "  ... and {} more", failures.len() - SHOWN).unwrap();
    }
}

/// The tag, path and field of each failure, without the values: times the
/// kernel sets differ between two runs of one case.
fn what_differs(failures: &[String]) -> BTreeSet<String> {
    failures
        .iter()
        .map(|f| f.split(": expected ").next().unwrap_or(f).to_string())
        .collect()
}
