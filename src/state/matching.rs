//! Matching the findings of two runs by fingerprint.
//!
//! Findings with the same fingerprint are matched by count: of `b` such
//! findings in the base run and `h` in the head run, `min(b, h)` persist.
//! Which ones pair up goes by nearest line first, so that of two identical
//! findings the one that moved least keeps its identity.

use std::collections::HashMap;

/// Fields of a finding that matching uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: i64,
    pub fingerprint: String,
    pub line: i32,
}

/// Result of matching a base run against a head run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matching {
    /// Head findings without a base counterpart, ascending by id.
    pub new: Vec<i64>,
    /// `(head id, base id)` pairs, ascending by head id.
    pub persisting: Vec<(i64, i64)>,
    /// Base findings without a head counterpart, ascending by id.
    pub resolved: Vec<i64>,
}

/// Largest group of identical fingerprints matched by comparing every
/// pair; larger groups are matched in line order, which stays linear.
const MAX_PAIRS: usize = 250_000;

pub fn match_runs(base: &[Candidate], head: &[Candidate]) -> Matching {
    let mut groups: HashMap<&str, (Vec<&Candidate>, Vec<&Candidate>)> = HashMap::new();
    for finding in base {
        groups
            .entry(&finding.fingerprint)
            .or_default()
            .0
            .push(finding);
    }
    for finding in head {
        groups
            .entry(&finding.fingerprint)
            .or_default()
            .1
            .push(finding);
    }

    let mut matching = Matching::default();
    for (_, (mut base_group, mut head_group)) in groups {
        base_group.sort_by_key(|finding| (finding.line, finding.id));
        head_group.sort_by_key(|finding| (finding.line, finding.id));
        let pairs = if base_group.len() * head_group.len() <= MAX_PAIRS {
            nearest_pairs(&base_group, &head_group)
        } else {
            base_group
                .iter()
                .zip(&head_group)
                .map(|(b, h)| (h.id, b.id))
                .collect()
        };
        let matched_base: std::collections::HashSet<i64> = pairs.iter().map(|(_, b)| *b).collect();
        let matched_head: std::collections::HashSet<i64> = pairs.iter().map(|(h, _)| *h).collect();
        matching.persisting.extend(pairs);
        matching.new.extend(
            head_group
                .iter()
                .map(|f| f.id)
                .filter(|id| !matched_head.contains(id)),
        );
        matching.resolved.extend(
            base_group
                .iter()
                .map(|f| f.id)
                .filter(|id| !matched_base.contains(id)),
        );
    }
    matching.new.sort_unstable();
    matching.persisting.sort_unstable();
    matching.resolved.sort_unstable();
    matching
}

/// Pairs findings greedily, closest lines first; ties go to the lower ids.
fn nearest_pairs(base: &[&Candidate], head: &[&Candidate]) -> Vec<(i64, i64)> {
    let mut candidates: Vec<(u32, i64, i64, usize, usize)> =
        Vec::with_capacity(base.len() * head.len());
    for (base_index, b) in base.iter().enumerate() {
        for (head_index, h) in head.iter().enumerate() {
            candidates.push((b.line.abs_diff(h.line), h.id, b.id, head_index, base_index));
        }
    }
    candidates.sort_unstable();
    let mut base_used = vec![false; base.len()];
    let mut head_used = vec![false; head.len()];
    let mut pairs = Vec::with_capacity(base.len().min(head.len()));
    for (_, head_id, base_id, head_index, base_index) in candidates {
        if !base_used[base_index] && !head_used[head_index] {
            base_used[base_index] = true;
            head_used[head_index] = true;
            pairs.push((head_id, base_id));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(id: i64, fingerprint: &str, line: i32) -> Candidate {
        Candidate {
            id,
            fingerprint: fingerprint.to_string(),
            line,
        }
    }

    #[test]
    fn counts_decide_new_and_resolved() {
        let base = [finding(1, "a", 10), finding(2, "a", 20), finding(3, "b", 5)];
        let head = [finding(11, "a", 12), finding(12, "c", 1)];
        let matching = match_runs(&base, &head);
        assert_eq!(matching.persisting, [(11, 1)]);
        assert_eq!(matching.new, [12]);
        assert_eq!(matching.resolved, [2, 3]);
    }

    #[test]
    fn nearest_line_wins() {
        // The finding at line 40 moved to 41; the one at line 10 went away.
        let base = [finding(1, "a", 10), finding(2, "a", 40)];
        let head = [finding(11, "a", 41)];
        let matching = match_runs(&base, &head);
        assert_eq!(matching.persisting, [(11, 2)]);
        assert_eq!(matching.resolved, [1]);
    }

    #[test]
    fn large_groups_match_in_line_order() {
        let base: Vec<Candidate> = (0..600).map(|i| finding(i, "a", i as i32)).collect();
        let head: Vec<Candidate> = (0..500)
            .map(|i| finding(1_000 + i, "a", i as i32))
            .collect();
        let matching = match_runs(&base, &head);
        assert_eq!(matching.persisting.len(), 500);
        assert_eq!(matching.persisting[0], (1_000, 0));
        assert_eq!(matching.resolved.len(), 100);
        assert!(matching.new.is_empty());
    }
}
