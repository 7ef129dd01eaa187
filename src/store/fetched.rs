//! Images fetched from elsewhere (a registry, an archive, another layout)
//! for a rebuild: kept in the store under `fetched/...` so that the next
//! run fetches nothing, marked by annotations on their index entry, and
//! dropped by `stash --prune` when unused for long.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use color_eyre::eyre::{eyre, Result};

use super::Store;
use crate::oci::{Descriptor, DescriptorExt, Digest, ImageIndex};

/// The annotation naming the reference a fetched image came from; the
/// mark of a fetched image (a stash of the user's has none).
pub const FETCHED_FROM: &str = "io.kiwi-stackbuild.fetched-from";
/// The digest of the manifest as the source served it (skopeo may convert
/// a Docker manifest to an OCI one, whose digest differs).
pub const SOURCE_DIGEST: &str = "io.kiwi-stackbuild.source-digest";
/// When it was first fetched (RFC 3339, UTC).
pub const FETCHED_AT: &str = "io.kiwi-stackbuild.fetched-at";
/// When a run last used it (RFC 3339, UTC).
pub const LAST_USED: &str = "io.kiwi-stackbuild.last-used";

/// The namespace of fetched images' names: `fetched/NAME:TAG`.
pub const NAMESPACE: &str = "fetched/";

/// Whether the index entry `d` is a fetched image.
pub fn is_fetched(d: &Descriptor) -> bool {
    annotation(d, FETCHED_FROM).is_some()
}

/// The annotation `key` of `d`.
pub fn annotation<'a>(d: &'a Descriptor, key: &str) -> Option<&'a str> {
    d.annotations().as_ref()?.get(key).map(String::as_str)
}

/// Marks `d` as fetched from `source` (whose manifest had `source_digest`)
/// and used `now`; the first fetch time of `before` (the entry it
/// replaces) is kept when it was the same image.
pub fn mark(d: &mut Descriptor, source: &str, source_digest: &Digest, before: Option<&Descriptor>, now: SystemTime) {
    let now = rfc3339(now);
    let same = before.filter(|b| b.digest() == d.digest());
    let at = same
        .and_then(|b| annotation(b, FETCHED_AT))
        .map_or_else(|| now.clone(), str::to_string);
    d.annotate(FETCHED_FROM, source);
    d.annotate(SOURCE_DIGEST, &source_digest.to_string());
    d.annotate(FETCHED_AT, &at);
    d.annotate(LAST_USED, &now);
}

/// The fetched entry of `index` whose source manifest was `source_digest`
/// and that came from `source`.
pub fn find_by_source(index: &ImageIndex, source: &str, source_digest: &Digest) -> Option<Descriptor> {
    let digest = source_digest.to_string();
    index
        .manifests()
        .iter()
        .filter(|d| annotation(d, FETCHED_FROM) == Some(source))
        .find(|d| annotation(d, SOURCE_DIGEST) == Some(digest.as_str()))
        .cloned()
}

/// When `d` was last used: its last-use time, else its fetch time. `None`
/// when it records neither readably.
pub fn last_used(d: &Descriptor) -> Option<SystemTime> {
    annotation(d, LAST_USED)
        .or_else(|| annotation(d, FETCHED_AT))
        .and_then(parse_rfc3339)
}

/// `now` as RFC 3339 UTC, to the second.
pub fn rfc3339(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    crate::oci::rfc3339(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// Reads `YYYY-MM-DDTHH:MM:SSZ` (what [`rfc3339`] writes).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days-from-civil, after Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Reads a duration as `stash --prune --older-than` takes it: a number and
/// a unit, `s`, `m`, `h`, `d` or `w` (`30d`, `12h`).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => 0,
    };
    match n.parse::<u64>() {
        Ok(n) if unit_secs > 0 => Ok(Duration::from_secs(n.saturating_mul(unit_secs))),
        _ => Err(eyre!(
            "invalid duration {s:?}: write a number and a unit, s, m, h, d or w (e.g. 30d, 12h)"
        )),
    }
}

impl Store {
    /// Removes the fetched images that no run used for `older_than` (as of
    /// `now`), then the blobs no remaining ref needs, as [`Store::remove`]
    /// does. Stashes of the user's are never touched. Returns the refs that
    /// went and how many blobs were freed.
    pub fn prune(&self, older_than: Duration, now: SystemTime) -> Result<(Vec<String>, usize)> {
        if !self.exists() {
            self.require_index()?;
            return Ok((Vec::new(), 0));
        }
        let lock = self.lock_exclusive()?;
        let read = self.index_and_unreadable()?;
        let cutoff = now.checked_sub(older_than).unwrap_or(UNIX_EPOCH);
        let keys: Vec<String> = read
            .0
            .manifests()
            .iter()
            .filter(|d| is_fetched(d))
            // One that records no readable time is old: nothing says it is used.
            .filter(|d| last_used(d).is_none_or(|t| t < cutoff))
            .filter_map(|d| d.ref_name().map(str::to_string))
            .collect();
        if keys.is_empty() {
            return Ok((keys, 0));
        }
        let freed = self.remove_keys(&lock, read, &keys)?;
        Ok((keys, freed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_back_as_written() {
        for secs in [0, 1, 951_782_400, 1_700_000_000, 4_102_444_799] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{}", rfc3339(t));
        }
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        for bad in [
            "",
            "2000-02-29",
            "2000-13-01T00:00:00Z",
            "2000-02-29T00:00:00+01:00",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_take_a_number_and_a_unit() {
        let h = 3600;
        for (s, secs) in [
            ("30d", 30 * 24 * h),
            ("12h", 12 * h),
            ("90s", 90),
            ("5m", 300),
            ("2w", 14 * 24 * h),
        ] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_secs(secs), "{s}");
        }
        for bad in ["", "30", "d", "3x", "-1d", "1.5h", "12 h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
