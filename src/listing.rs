//! `stash --list`: the stashes of the store as a table or as JSON.

use color_eyre::eyre::Result;

use crate::stash::human_size;
use crate::store::Store;

/// Prints the stashes of `store` on stdout: a table, or JSON with `json`.
/// A missing or empty store prints no rows (and `[]` as JSON).
pub fn print(store: &Store, json: bool) -> Result<()> {
    let entries = match store.lock_shared()? {
        Some(_lock) => store.list()?,
        None => Vec::new(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        eprintln!("no stashes in {}", store.root().display());
        return Ok(());
    }
    println!(
        "{:<32} {:<12} {:>6} {:>9}  {:<20}  BASE",
        "STASH", "DIGEST", "LAYERS", "SIZE", "CREATED"
    );
    for e in entries {
        let base = e
            .base
            .as_deref()
            .and_then(|b| b.split(' ').next_back())
            .map(|b| b.split('@').next().unwrap_or(b))
            .unwrap_or("-");
        println!(
            "{:<32} {:<12} {:>6} {:>9}  {:<20}  {}",
            e.reference,
            e.digest.short(),
            e.layers,
            human_size(e.size),
            e.created.as_deref().unwrap_or("-"),
            base
        );
    }
    Ok(())
}
