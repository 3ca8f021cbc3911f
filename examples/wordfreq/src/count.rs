//! Word counting: splits text into case-folded words and ranks them. No I/O, no JSON.

use std::cmp::Reverse;
use std::collections::BTreeMap;

/// How often each word occurs in a text, and the most frequent ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frequencies {
    /// All words, counting repeats.
    pub(crate) total_words: u64,
    /// Distinct words after case folding.
    pub(crate) unique_words: u64,
    /// The most frequent words, most frequent first; ties in word order.
    pub(crate) top: Vec<(String, u64)>,
}

/// Counts the words in `text` and keeps the `top` most frequent.
///
/// A word is a maximal run of alphanumeric characters in the Unicode sense, so `naïve`, `東京`
/// and `42` are words, and `don't` is the two words `don` and `t`. Words are lowercased with
/// Unicode's lowercase mapping (not full case folding: `Straße` and `STRASSE` stay apart).
/// Words with equal counts are ordered by their code points, which makes the result
/// deterministic for a given text.
pub(crate) fn count_words(text: &str, top: usize) -> Frequencies {
    // A BTreeMap rather than a HashMap: no hasher seed to draw from the host's randomness,
    // and its order already serves as the tie-break below.
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut total_words = 0;
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
        total_words += 1;
    }

    let unique_words = counts.len() as u64;
    let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
    // Stable sort on the count alone keeps the map's alphabetical order within a tie.
    ranked.sort_by_key(|(_, count)| Reverse(*count));
    ranked.truncate(top);

    Frequencies {
        total_words,
        unique_words,
        top: ranked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top_words(text: &str, top: usize) -> Vec<(String, u64)> {
        count_words(text, top).top
    }

    fn expected(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs
            .iter()
            .map(|(word, count)| ((*word).to_owned(), *count))
            .collect()
    }

    #[test]
    fn counts_case_folded_words() {
        let freq = count_words("The cat and THE hat. the end", 10);
        assert_eq!(freq.total_words, 7);
        assert_eq!(freq.unique_words, 5);
        assert_eq!(freq.top[0], ("the".to_owned(), 3));
    }

    #[test]
    fn ties_are_broken_alphabetically() {
        assert_eq!(
            top_words("pear apple fig apple fig pear", 10),
            expected(&[("apple", 2), ("fig", 2), ("pear", 2)])
        );
    }

    #[test]
    fn keeps_only_top_n() {
        assert_eq!(top_words("b b b a a c", 2), expected(&[("b", 3), ("a", 2)]));
        assert!(count_words("a b c", 0).top.is_empty());
    }

    #[test]
    fn splits_on_any_non_alphanumeric_character() {
        let freq = count_words("don't—stop…42 times,\tnaïve ÉCOLE école 東京", 10);
        let words: Vec<&str> = freq.top.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(
            words,
            ["école", "42", "don", "naïve", "stop", "t", "times", "東京"]
        );
        assert_eq!(freq.total_words, 9);
    }

    #[test]
    fn empty_and_punctuation_only_texts_have_no_words() {
        for text in ["", "  ...  !!! --- "] {
            let freq = count_words(text, 10);
            assert_eq!((freq.total_words, freq.unique_words), (0, 0));
            assert!(freq.top.is_empty());
        }
    }
}
