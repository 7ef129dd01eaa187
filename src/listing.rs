//! What commands print on stdout: `stash --list` and `stash --check` (the
//! stashes of the store as a table or as JSON, and what is wrong with the
//! store), single result lines, and sizes as people read them.

use std::io::Write;

use color_eyre::eyre::{eyre, Result};

use crate::store::walk::Kind;
use crate::store::{Damaged, Entry, Store};

/// Prints the stashes of `store` on stdout: a table, or JSON with `json`.
/// A missing or empty store prints no rows (and `[]` as JSON). Broken
/// stashes are listed with what is wrong, and then the command fails with
/// [`Damaged`] (exit status 3) and a one-line summary.
pub fn print(store: &Store, json: bool) -> Result<()> {
    let entries = match store.lock_shared()? {
        Some(_lock) => store.list()?,
        None => Vec::new(),
    };
    if json {
        line(&serde_json::to_string_pretty(&entries)?)?;
    } else if entries.is_empty() {
        eprintln!("no stashes in {}", store.root().display());
    } else {
        print_table(&entries)?;
    }
    let broken = entries.iter().filter(|e| e.broken.is_some()).count();
    if broken > 0 {
        return Err(Damaged(format!(
            "{broken} of {} stashes {} broken; see kiwi-stackbuild stash --check",
            entries.len(),
            if broken == 1 { "is" } else { "are" }
        ))
        .into());
    }
    Ok(())
}

fn print_table(entries: &[Entry]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<32} {:<12} {:>6} {:>9}  {:<20}  BASE",
        "STASH", "DIGEST", "LAYERS", "SIZE", "CREATED"
    )?;
    for e in entries {
        let base = e
            .base
            .as_deref()
            .and_then(|b| b.split(' ').next_back())
            .map(|b| b.split('@').next().unwrap_or(b))
            .unwrap_or("-");
        // What is not a whole image of ours says so at the end of its row.
        let mut note = String::new();
        if e.kind != Kind::OciImage {
            note.push_str(&format!("  ({})", e.kind));
        }
        if let Some(from) = &e.fetched_from {
            let used = e.last_used.as_deref().unwrap_or("-");
            note.push_str(&format!("  fetched from {from}, last used {used}"));
        }
        if let Some(why) = &e.broken {
            note.push_str(&format!("  broken: {why}"));
        }
        let (layers, size) = if e.layers == 0 && (e.broken.is_some() || e.kind != Kind::OciImage) {
            ("-".to_string(), "-".to_string())
        } else {
            (e.layers.to_string(), human_size(e.size))
        };
        writeln!(
            out,
            "{:<32} {:<12} {:>6} {:>9}  {:<20}  {}{note}",
            e.reference,
            e.digest
                .split_once(':')
                .map_or(e.digest.as_str(), |(_, hex)| hex)
                .get(..12)
                .unwrap_or("-"),
            layers,
            size,
            e.created.as_deref().unwrap_or("-"),
            base
        )?;
    }
    Ok(())
}

/// Prints `text` and a newline on stdout. Unlike `println!`, a reader that
/// went away (`stash --list | head -1`) is an error, [`is_closed_pipe`],
/// not a panic.
pub fn line(text: &str) -> Result<()> {
    writeln!(std::io::stdout().lock(), "{text}")?;
    Ok(())
}

/// Whether `err` is stdout's reader having gone away, which ends a command
/// quietly, as it ends the shell's own tools.
pub fn is_closed_pipe(err: &color_eyre::Report) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `stash --check [--repair]`: prints one line per problem on stdout; with
/// `repair`, removes what no stash needs and prints what it removed. Fails
/// with [`Damaged`] (exit status 3) when problems were found (with
/// `repair`: when some remain).
pub fn check(store: &Store, repair: bool) -> Result<()> {
    if !store.exists() {
        store.require_index()?;
        eprintln!("no stashes in {}: nothing to check", store.root().display());
        return Ok(());
    }
    let lock = if repair {
        store.lock_exclusive_as_is()?
    } else {
        // Shared: a read-only store can be checked.
        store
            .lock_shared()?
            .ok_or_else(|| eyre!("the stash store {} went away", store.root().display()))?
    };
    let checked = store.check(&lock)?;
    for f in &checked.findings {
        line(&f.text)?;
    }
    let remaining = if repair {
        let (removed, remaining) = store.repair(&checked, &lock)?;
        for removed in &removed {
            line(removed)?;
        }
        remaining.len()
    } else {
        checked.findings.len()
    };
    let root = store.root().display();
    if remaining > 0 {
        let what = if repair { "remain after the repair" } else { "found" };
        let hint = if repair {
            "see above for what to do"
        } else {
            "kiwi-stackbuild stash --check --repair removes what no stash needs"
        };
        let problems = if remaining == 1 { "problem" } else { "problems" };
        return Err(Damaged(format!("{remaining} {problems} {what} in {root}; {hint}")).into());
    }
    if checked.findings.is_empty() {
        eprintln!(
            "{root}: no problems ({} refs, {} blobs checked)",
            checked.refs, checked.blobs
        );
    } else {
        eprintln!("{root}: repaired");
    }
    Ok(())
}

/// Bytes as a short human size (`171.3 MB`).
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}
