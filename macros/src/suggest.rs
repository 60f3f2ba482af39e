//! "Did you mean ...?": the closest contract name by edit distance.

/// Levenshtein distance between two strings, by characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a likely typo
/// (at most a third of the name's length, and at least 3 edits allowed).
pub(crate) fn closest(name: &str, candidates: impl Iterator<Item = String>) -> Option<String> {
    let limit = (name.chars().count() / 3).max(3);
    candidates
        .map(|candidate| (edit_distance(name, &candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn suggests_typos_but_not_unrelated_names() {
        let names = || {
            [
                "get_connection_id_by_websocket",
                "update_connection_thread",
                "send_to_user",
            ]
            .into_iter()
            .map(String::from)
        };
        assert_eq!(
            closest("get_connection_by_websocket", names()).as_deref(),
            Some("get_connection_id_by_websocket")
        );
        assert_eq!(
            closest("send_to_usr", names()).as_deref(),
            Some("send_to_user")
        );
        assert_eq!(closest("flush_metrics", names()), None);
    }
}
