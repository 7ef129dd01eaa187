//! "Did you mean": the known word closest to a misspelled one, by edit
//! distance, for stash names and kiwi-ng options.

/// The Levenshtein distance of `a` and `b`, in characters: how many
/// insertions, deletions and substitutions turn one into the other.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb)).min(above + 1).min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The candidate closest to `word`, when it is close enough to be what was
/// meant: at most a third of `word`'s length away (and at least one edit
/// allowed). The first of equally close ones wins; `word` itself is no
/// suggestion.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_count_single_edits() {
        let cases = [
            ("", "", 0),
            ("abc", "", 3),
            ("", "abc", 3),
            ("basse", "base", 1),
            ("kitten", "sitting", 3),
            ("--add-pakage", "--add-package", 1),
            ("flaw", "lawn", 2),
            ("äb", "ab", 1),
        ];
        for (a, b, want) in cases {
            assert_eq!(edit_distance(a, b), want, "{a} {b}");
            assert_eq!(edit_distance(b, a), want, "{b} {a}");
        }
    }

    #[test]
    fn only_close_words_are_suggested() {
        let options = ["--add-package", "--add-repo", "--delete-package", "--target-dir"];
        assert_eq!(closest("--add-pakage", options), Some("--add-package"));
        assert_eq!(closest("--target-dri", options), Some("--target-dir"));
        assert_eq!(closest("--bogus", options), None);
        assert_eq!(closest("basse:1", ["base:1", "other:1"]), Some("base:1"));
        assert_eq!(closest("ab", ["xy"]), None);
        assert_eq!(closest("base:1", ["base:1"]), None);
    }
}
