//! The runner of the layer differential corpus (`tests/layer_differential.rs`):
//! cases, how each is unpacked by umoci and by ours, how the trees compare.
//!
//! A case is a sequence of layers and what is expected of it. The runner
//! writes each case's layers twice into one OCI layout: image `umoci`, every
//! layer gzip (what umoci 0.4.7 reads), and image `ours`, each layer in the
//! compression the case names. Roots are `<tmp>/cases/<case>/<tool>/rootfs`,
//! the sentinel that no case may change is `<tmp>/sentinel`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::layers::{self, flag, snapshot_ns, Blob, Compression, Entry};
use super::tree::{self, escape, Kind, Snapshot};

/// An unpacker under test: the image `name` of the OCI layout `layout`
/// into `rootfs`, which does not exist yet.
pub type Unpack = fn(layout: &Path, name: &str, rootfs: &Path) -> Result<(), String>;

/// Default mtime of the entries of layer `n`: `BASE + n * LAYER_STEP`, plus
/// a minute per position in the layer.
pub const BASE: u64 = 1_600_000_000;
/// See [`BASE`].
pub const LAYER_STEP: u64 = 1_000_000;
/// Differences shown per failing case.
const SHOWN: usize = 12;

/// `umoci raw unpack --keep-dirlinks` of the image `name` in `layout`.
pub fn unpack_umoci(layout: &Path, name: &str, rootfs: &Path) -> Result<(), String> {
    let umoci = std::env::var_os("UMOCI").unwrap_or_else(|| "umoci".into());
    let mut image = layout.as_os_str().to_owned();
    image.push(format!(":{name}"));
    let out = Command::new(&umoci)
        .args(["--log=error", "raw", "unpack", "--keep-dirlinks", "--image"])
        .arg(image)
        .arg(rootfs)
        .output()
        .unwrap_or_else(|e| panic!("running {umoci:?}: {e}"));
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(stderr.lines().last().unwrap_or("(no stderr)").trim().to_string())
    }
}

/// A check of our tree alone, returning its failures.
pub type Check = Box<dyn Fn(&Snapshot) -> Vec<String> + Send + Sync>;

/// What a case expects.
pub enum Expect {
    /// umoci unpacks it; ours must give the same tree.
    Same,
    /// umoci refuses it; ours must refuse it too, leaving nothing beside
    /// the root.
    BothRefuse,
    /// umoci 0.4.7 cannot be the oracle: ours must succeed and pass these
    /// checks, each returning its failures.
    Ours(Check),
    /// A deliberate difference: ours refuses what umoci 0.4.7 unpacks, with
    /// an error that contains this text.
    OursRefuse(&'static str),
}

/// One layer: its entries and how our copy of it is compressed (umoci's
/// copy is always gzip).
pub struct Layer {
    pub entries: Vec<Entry>,
    pub ours: Compression,
    pub ending: Ending,
}

/// How a layer's tar stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Two zero blocks after the last entry.
    EndBlocks,
    /// Right after the last entry's padded data.
    NoEndBlocks,
    /// Right after the last entry's data, not even padded to a block.
    Unpadded,
    /// End blocks, then zeros up to GNU tar's 10 KiB record.
    Record,
}

/// The tar stream of `layer`, its entries' default times those of layer `n`.
pub fn layer_tar(layer: &Layer, n: usize) -> Vec<u8> {
    let mut tar = layers::tar(&layer.entries, BASE + LAYER_STEP * n as u64);
    let last_data = layer.entries.last().map_or(0, |e| e.data.len());
    match layer.ending {
        Ending::EndBlocks => {}
        Ending::NoEndBlocks => tar.truncate(tar.len() - 1024),
        Ending::Unpadded => tar.truncate(tar.len() - 1024 - (512 - last_data % 512) % 512),
        Ending::Record => tar.resize(tar.len().div_ceil(10240) * 10240, 0),
    }
    tar
}

/// One named case of the corpus.
pub struct Case {
    /// `group/what_it_checks`, unique.
    pub name: String,
    /// Lowest first.
    pub layers: Vec<Layer>,
    pub expect: Expect,
}

impl Case {
    pub fn new(name: &str, layers: Vec<Vec<Entry>>, expect: Expect) -> Case {
        let layers = layers
            .into_iter()
            .map(|entries| Layer {
                entries,
                ours: Compression::Gzip,
                ending: Ending::EndBlocks,
            })
            .collect();
        Case {
            name: name.to_string(),
            layers,
            expect,
        }
    }

    /// Our copy of every layer compressed this way.
    pub fn ours(mut self, compression: Compression) -> Case {
        self.layers.iter_mut().for_each(|l| l.ours = compression);
        self
    }

    /// Our copies compressed one way each, lowest layer first.
    pub fn ours_each(mut self, compressions: &[Compression]) -> Case {
        assert_eq!(compressions.len(), self.layers.len(), "{}", self.name);
        for (layer, c) in self.layers.iter_mut().zip(compressions) {
            layer.ours = *c;
        }
        self
    }

    /// Every layer ending this way.
    pub fn ending(mut self, ending: Ending) -> Case {
        self.layers.iter_mut().for_each(|l| l.ending = ending);
        self
    }

    /// Whether some layer has an entry for the root directory itself.
    pub fn has_root_entry(&self) -> bool {
        self.layers
            .iter()
            .flat_map(|l| &l.entries)
            .any(|e| e.typeflag == flag::DIR && layers::umoci_clean(&e.name) == b".")
    }
}

/// A case where ours must give umoci's tree.
pub fn same(name: &str, layers: Vec<Vec<Entry>>) -> Case {
    Case::new(name, layers, Expect::Same)
}

/// A case umoci refuses, and ours must refuse.
pub fn refused(name: &str, layers: Vec<Vec<Entry>>) -> Case {
    Case::new(name, layers, Expect::BothRefuse)
}

/// A case ours refuses on purpose, with an error containing `reason`.
pub fn ours_refuse(name: &str, layers: Vec<Vec<Entry>>, reason: &'static str) -> Case {
    Case::new(name, layers, Expect::OursRefuse(reason))
}

/// A case checked on our tree alone.
pub fn ours_only(
    name: &str,
    layers: Vec<Vec<Entry>>,
    check: impl Fn(&Snapshot) -> Vec<String> + Send + Sync + 'static,
) -> Case {
    Case::new(name, layers, Expect::Ours(Box::new(check)))
}

/// Where the cases run, and what they may aim at outside their roots.
pub struct Ctx {
    /// A directory beside every root tree, which no case may change.
    pub sentinel: PathBuf,
}

/// Relative path from the top of a case's root tree to the sentinel:
/// roots are `<tmp>/cases/<case>/<tool>/rootfs`, the sentinel `<tmp>/sentinel`.
pub const CLIMB_TO_SENTINEL: &str = "../../../../sentinel";

/// Whole seconds as nanoseconds.
pub fn sec(secs: u64) -> i64 {
    secs as i64 * 1_000_000_000
}

/// Failures unless the tree holds exactly `paths`.
pub fn only(snap: &Snapshot, paths: &[&str]) -> Vec<String> {
    let want: BTreeSet<Vec<u8>> = paths.iter().map(|p| p.as_bytes().to_vec()).collect();
    let have: BTreeSet<Vec<u8>> = snap.keys().cloned().collect();
    let mut errors: Vec<String> = want
        .difference(&have)
        .map(|p| format!("{}: missing", escape(p)))
        .collect();
    errors.extend(have.difference(&want).map(|p| format!("{}: unexpected", escape(p))));
    errors
}

/// Failures unless `path` has this owner and mtime (in nanoseconds).
pub fn want(snap: &Snapshot, path: &str, owner: Option<(u32, u32)>, mtime: Option<i64>) -> Vec<String> {
    let Some(entry) = snap.get(path.as_bytes()) else {
        return vec![format!("{path:?}: missing")];
    };
    let mut errors = Vec::new();
    if let Some((uid, gid)) = owner.filter(|o| *o != (entry.uid, entry.gid)) {
        errors.push(format!(
            "{path:?}: owner: expected {uid}:{gid}, found {}:{}",
            entry.uid, entry.gid
        ));
    }
    if let Some(ns) = mtime.filter(|ns| *ns != entry.mtime) {
        let (want, got) = (layers::show_nanos(ns), layers::show_nanos(entry.mtime));
        errors.push(format!("{path:?}: mtime: expected {want}, found {got}"));
    }
    errors
}

/// Every difference between umoci's tree and ours. Directories whose mtime
/// umoci set to "now" (no tar entry of their own) and the root without a
/// root entry are compared without their mtime.
fn compare(umoci: &Snapshot, ours: &Snapshot, root_entry: bool, now: i64) -> Vec<String> {
    let timeless = |snap: &Snapshot| {
        let mut snap = snap.clone();
        snap.values_mut().for_each(|e| e.mtime = 0);
        snap
    };
    let mut diffs = tree::tree_diff(&timeless(umoci), &timeless(ours));
    for (path, want) in umoci {
        let Some(got) = ours.get(path) else { continue };
        let implicit = want.kind == Kind::Dir && (want.mtime >= now || (path == b"." && !root_entry));
        if !implicit && want.mtime != got.mtime {
            let show = |ns: i64| match ns >= now {
                true => format!("{} (now)", layers::show_nanos(ns)),
                false => layers::show_nanos(ns),
            };
            diffs.push(format!(
                "{}: mtime: expected {}, found {}",
                escape(path),
                show(want.mtime),
                show(got.mtime)
            ));
        }
    }
    diffs.sort();
    diffs
}

/// Names in `dir` other than `rootfs`: what an unpack left beside its root.
fn beside_root(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "rootfs")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs one case in `dir`; its failures, empty when it passes.
fn run_case(case: &Case, dir: &Path, ctx: &Ctx, sentinel_before: &Snapshot, ours: Unpack) -> Vec<String> {
    let layout = dir.join("layout");
    let tars: Vec<Vec<u8>> = case.layers.iter().enumerate().map(|(n, l)| layer_tar(l, n)).collect();
    let ours_blobs: Vec<Blob> = tars
        .iter()
        .zip(&case.layers)
        .map(|(t, l)| Blob::new(t, l.ours))
        .collect();
    layers::write_image(&layout, "ours", &ours_blobs);
    let umoci_blobs: Vec<Blob> = tars.iter().map(|t| Blob::new(t, Compression::Gzip)).collect();
    layers::write_image(&layout, "umoci", &umoci_blobs);

    let (umoci_dir, ours_dir) = (dir.join("umoci"), dir.join("ours"));
    fs::create_dir_all(&umoci_dir).unwrap();
    fs::create_dir_all(&ours_dir).unwrap();
    let (umoci_root, ours_root) = (umoci_dir.join("rootfs"), ours_dir.join("rootfs"));
    let now = (SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 - 2) * 1_000_000_000;

    let mut failures = Vec::new();
    let umoci = match case.expect {
        Expect::Ours(_) | Expect::OursRefuse(_) => None,
        _ => Some(unpack_umoci(&layout, "umoci", &umoci_root)),
    };
    let ours = ours(&layout, "ours", &ours_root);
    if std::env::var_os("LAYER_VERBOSE").is_some() {
        eprintln!("{}:\n    umoci: {umoci:?}\n    ours:  {ours:?}", case.name);
    }
    match (&case.expect, umoci, ours) {
        (Expect::Same, Some(Ok(())), Ok(())) => {
            failures.extend(compare(
                &snapshot_ns(&umoci_root),
                &snapshot_ns(&ours_root),
                case.has_root_entry(),
                now,
            ));
        }
        (Expect::Same, Some(Err(e)), _) => failures.push(format!("corpus: umoci refused it: {e}")),
        (Expect::Same, _, Err(e)) => failures.push(format!("ours refused what umoci unpacks: {e}")),
        (Expect::BothRefuse, Some(Ok(())), _) => failures.push("corpus: umoci accepted it".to_string()),
        (Expect::BothRefuse, Some(Err(umoci)), Ok(())) => {
            failures.push(format!("ours accepted what umoci refuses ({umoci})"))
        }
        (Expect::BothRefuse, Some(Err(_)), Err(_)) => {}
        (Expect::Ours(check), _, Ok(())) => failures.extend(check(&snapshot_ns(&ours_root))),
        (Expect::Ours(_), _, Err(e)) => failures.push(format!("ours refused it: {e}")),
        (Expect::OursRefuse(reason), _, Err(e)) if e.contains(reason) => {}
        (Expect::OursRefuse(reason), _, result) => {
            failures.push(format!("ours should refuse it ({reason}), but: {result:?}"))
        }
        (_, None, _) => unreachable!("umoci runs for every differential case"),
    }
    for (tool, tool_dir) in [("umoci", &umoci_dir), ("ours", &ours_dir)] {
        let left = beside_root(tool_dir);
        if !left.is_empty() {
            failures.push(format!("{tool} left {left:?} beside the root"));
        }
    }
    let sentinel = tree::tree_diff(sentinel_before, &tree::snapshot(&ctx.sentinel));
    failures.extend(
        sentinel
            .into_iter()
            .map(|d| format!("SENTINEL OUTSIDE THE ROOT CHANGED: {d}")),
    );
    failures
}

fn make_sentinel(sentinel: &Path) {
    fs::create_dir_all(sentinel.join("sub")).unwrap();
    fs::write(sentinel.join("keep"), "must survive every case").unwrap();
    fs::write(sentinel.join("sub/inner"), "also").unwrap();
    std::os::unix::fs::symlink("keep", sentinel.join("lnk")).unwrap();
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|id| id == "0"))
        .unwrap_or(false)
}

/// Runs every case `corpus` makes whose name contains `LAYER_CASE`, our side
/// unpacked by `ours`, and panics with every failing case and its
/// differences.
pub fn run(corpus: impl FnOnce(&Ctx) -> Vec<Case>, ours: Unpack) {
    assert!(
        is_root(),
        "the layer corpus needs root: owners, device nodes, security.capability"
    );
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    if std::env::var_os("LAYER_KEEP").is_some() {
        eprintln!("keeping the case trees in {}", tmp.path().display());
    }
    let ctx = Ctx {
        sentinel: tmp.path().join("sentinel"),
    };
    make_sentinel(&ctx.sentinel);
    let sentinel_before = tree::snapshot(&ctx.sentinel);

    let filter = std::env::var("LAYER_CASE").unwrap_or_default();
    let cases: Vec<Case> = corpus(&ctx).into_iter().filter(|c| c.name.contains(&filter)).collect();
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    assert!(
        filter.is_empty() || !cases.is_empty(),
        "no case matches LAYER_CASE={filter}"
    );

    // One case at a time, so that a change to the sentinel is the fault of
    // the case that just ran.
    let results: Vec<Vec<String>> = cases
        .iter()
        .map(|case| {
            let dir = tmp.path().join("cases").join(case.name.replace('/', "--"));
            run_case(case, &dir, &ctx, &sentinel_before, ours)
        })
        .collect();

    let mut report = String::new();
    let mut failing = 0;
    for (case, failures) in cases.iter().zip(&results) {
        if failures.is_empty() {
            continue;
        }
        failing += 1;
        report.push_str(&format!("\n{} ({} difference(s)):\n", case.name, failures.len()));
        for failure in failures.iter().take(SHOWN) {
            report.push_str(&format!("    {failure}\n"));
        }
        if failures.len() > SHOWN {
            report.push_str(&format!("    ... and {} more\n", failures.len() - SHOWN));
        }
    }
    eprintln!(
        "layer corpus: {} cases, {failing} failing, {:.1}s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    if std::env::var_os("LAYER_KEEP").is_some() {
        let _ = tmp.keep();
    }
    assert!(
        failing == 0,
        "{failing} of {} layer cases differ from umoci 0.4.7 --keep-dirlinks:\n{report}",
        cases.len()
    );
}
