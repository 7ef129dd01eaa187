//! `stash --check [--repair]`: every blob verified over its whole length,
//! and every problem named; a repair removes only what no ref needs.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader};
use std::path::PathBuf;

use color_eyre::eyre::{Result, WrapErr};
use color_eyre::Section;

use super::walk::{self, Fault};
use super::{is_blob_name, ref_name, Lock, Store};
use crate::oci::{Digest, HashingReader};

/// One problem `--check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// One line that names the blob or ref, and what to do where a repair
    /// cannot.
    pub text: String,
    /// What `--repair` removes for it, if anything.
    pub fix: Fix,
}

/// What a repair does about a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// Nothing: it needs the user (a ref to a missing or corrupt blob).
    None,
    /// Remove this blob (hex name), which no ref needs.
    Blob(String),
    /// Remove this temp file a killed run left.
    Temp(PathBuf),
}

/// What `--check` found.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Every problem: those of refs, of blobs, a ref that keeps blobs from
    /// counting as unused, then temp files.
    pub findings: Vec<Finding>,
    /// How many refs were checked.
    pub refs: usize,
    /// How many blob files were checked.
    pub blobs: usize,
    /// The ref whose manifest cannot be read, so that no blob may be
    /// called unused while it is there.
    pub blocked_by: Option<String>,
    chains: Vec<Digest>,
}

/// A blob refs need: the size they record, and who they are.
#[derive(Debug, Default)]
struct Needed {
    size: Option<u64>,
    refs: Vec<String>,
}

impl Store {
    /// Checks the whole store: refs to missing blobs, manifests that cannot
    /// be read, every blob's digest and size, blobs no ref needs, leftover
    /// temp files. Changes nothing; the shared lock is enough.
    pub fn check(&self, _lock: &Lock) -> Result<Checked> {
        let (index, unreadable) = self.index_and_unreadable()?;
        let mut checked = Checked {
            refs: index.manifests().len() + unreadable.len(),
            ..Checked::default()
        };
        for u in &unreadable {
            checked.blocked_by.get_or_insert_with(|| u.name.clone());
            checked.findings.push(Finding {
                text: format!(
                    "{}: its index entry cannot be read ({}); {}",
                    u.name,
                    u.error,
                    u.advice()
                ),
                fix: Fix::None,
            });
        }
        let mut needed: BTreeMap<String, Needed> = BTreeMap::new();
        for d in index.manifests() {
            let name = ref_name(d);
            let reach = walk::reach(self.root(), d);
            if checked.blocked_by.is_none() && reach.blocker().is_some() {
                checked.blocked_by = Some(name.clone());
            }
            for p in &reach.problems {
                // A present blob of the wrong size or content is reported
                // below, once, with every ref that needs it.
                if !matches!(p.fault, Fault::WrongSize { .. } | Fault::Corrupt) {
                    checked.findings.push(Finding {
                        text: format!("{name}: {p}; {}", advice(std::slice::from_ref(&name))),
                        fix: Fix::None,
                    });
                }
            }
            for n in reach.needs {
                let need = needed.entry(n.digest.hex().to_string()).or_default();
                need.size = need.size.or(n.size);
                if !need.refs.contains(&name) {
                    need.refs.push(name.clone());
                }
            }
            checked.chains.extend(reach.chains);
        }
        self.check_blobs(&needed, &mut checked)?;
        if let Some(name) = &checked.blocked_by {
            checked.findings.push(Finding {
                text: format!(
                    "{name}: what it needs cannot be told, so no blob counts as unused until it is mended \
                     or removed; {}",
                    advice(std::slice::from_ref(name))
                ),
                fix: Fix::None,
            });
        }
        for path in self.temp_files()? {
            checked.findings.push(Finding {
                text: format!("leftover temp file {}", path.display()),
                fix: Fix::Temp(path),
            });
        }
        Ok(checked)
    }

    /// Every blob file: its digest over its whole length, its size against
    /// what refs record, and whether any ref needs it.
    fn check_blobs(&self, needed: &BTreeMap<String, Needed>, checked: &mut Checked) -> Result<()> {
        let dir = self.blob_dir();
        let entries = match fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                checked.findings.push(Finding {
                    text: format!(
                        "the blob directory {} is missing: every stash lacks its blobs; \
                         restore it from a backup, or remove the store directory to start anew",
                        dir.display()
                    ),
                    fix: Fix::None,
                });
                return Ok(());
            }
            read => read.wrap_err_with(|| format!("reading {}", dir.display()))?,
        };
        let mut names: Vec<String> = entries
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names.into_iter().filter(|n| !n.starts_with('.')) {
            let path = dir.join(&name);
            if !is_blob_name(&name) {
                checked.findings.push(Finding {
                    text: format!("{} is not a blob: its name is no sha256 digest", path.display()),
                    fix: Fix::None,
                });
                continue;
            }
            checked.blobs += 1;
            let digest = format!("sha256:{name}");
            let (actual, len) = match hash(&path) {
                Ok(found) => found,
                Err(e) => {
                    checked.findings.push(Finding {
                        text: format!("blob {digest} cannot be read: {e}"),
                        fix: Fix::None,
                    });
                    continue;
                }
            };
            let wrong = match needed.get(&name).and_then(|n| n.size) {
                Some(recorded) if recorded != len => Some(format!("{len} bytes, {recorded} recorded")),
                _ if actual.hex() != name => Some("its content does not match its digest".to_string()),
                _ => None,
            };
            let text = match (needed.get(&name), wrong) {
                (Some(n), Some(why)) => format!(
                    "blob {digest} is corrupt ({why}); needed by {}; {}",
                    n.refs.join(", "),
                    advice(&n.refs)
                ),
                (Some(_), None) => continue,
                (None, wrong) => {
                    let what = if checked.blocked_by.is_some() {
                        "by any readable stash"
                    } else {
                        "by any stash"
                    };
                    match wrong {
                        Some(why) => format!("blob {digest} is corrupt ({why}) and not used {what}"),
                        None => format!("blob {digest} is not used {what}"),
                    }
                }
            };
            let fix = if needed.contains_key(&name) {
                Fix::None
            } else {
                Fix::Blob(name)
            };
            checked.findings.push(Finding { text, fix });
        }
        Ok(())
    }

    /// The `.tmp-*` files and directories in the store and its blob
    /// directory that no running process holds (a live run keeps its own
    /// locked), so that a store in use is not reported as damaged.
    fn temp_files(&self) -> Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for dir in [self.root().to_path_buf(), self.blob_dir()] {
            let entries = match fs::read_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                read => read.wrap_err_with(|| format!("reading {}", dir.display()))?,
            };
            for entry in entries {
                let entry = entry?;
                if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                // What cannot even be opened is reported too.
                if !matches!(crate::fsutil::claim_if_abandoned(&entry.path()), Ok(None)) {
                    found.push(entry.path());
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Removes what `checked` found that no ref needs: unused blobs (unless
    /// a ref that cannot be read may need them) and leftover temp files
    /// (those of no running process). Never a ref, never a blob a ref needs.
    /// Returns one line per thing removed (or temp file kept), and the
    /// findings that remain.
    pub fn repair(&self, checked: &Checked, lock: &Lock) -> Result<(Vec<String>, Vec<Finding>)> {
        let mut removed = Vec::new();
        let mut remaining = Vec::new();
        let mut temps = false;
        for finding in &checked.findings {
            match &finding.fix {
                Fix::Blob(name) if checked.blocked_by.is_none() => {
                    let path = self.blob_dir().join(name);
                    match fs::remove_file(&path) {
                        Ok(()) => removed.push(format!("removed blob sha256:{name}, which no stash used")),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(e)
                                .wrap_err_with(|| format!("removing {}", path.display()))
                                .suggestion("run stash --check --repair where the store is writable, as its owner")
                        }
                    }
                }
                Fix::Temp(_) => temps = true,
                _ => remaining.push(finding.clone()),
            }
        }
        if checked.blocked_by.is_none() {
            crate::layer::cache::prune(self.root(), &checked.chains);
        }
        if temps {
            self.remove_leftovers(lock)?;
            for finding in &checked.findings {
                let Fix::Temp(path) = &finding.fix else { continue };
                if path.symlink_metadata().is_ok() {
                    let text = format!("kept temp file {}: a running process may still use it", path.display());
                    removed.push(text.clone());
                    remaining.push(Finding { text, fix: Fix::None });
                } else {
                    removed.push(format!("removed leftover temp file {}", path.display()));
                }
            }
        }
        Ok((removed, remaining))
    }
}

/// What the user can do about refs that need a blob they cannot have.
fn advice(refs: &[String]) -> String {
    match refs {
        [one] => format!("re-pull or re-stash {one}, or remove it with kiwi-stackbuild stash --rm {one}"),
        _ => format!(
            "re-pull or re-stash {}, or remove each with kiwi-stackbuild stash --rm NAME:TAG",
            refs.join(", ")
        ),
    }
}

/// The digest and size of the file at `path`, read over its whole length:
/// only a regular file, never through a symlink (a FIFO or a link to
/// /dev/zero would never end).
fn hash(path: &std::path::Path) -> io::Result<(Digest, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = || io::Error::other("it is not a regular file");
    if !fs::symlink_metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    let mut reader = HashingReader::new(BufReader::new(file));
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.finish())
}
