//! Which partitions a replica should hold, from the list of live replicas every replica reads
//! from the same table: partition `k` goes to the `(k mod M)`-th live replica in the order of
//! their ids. Every replica computes the same answer from the same list, so they agree without
//! talking to each other, and the shares differ by at most one partition. While their views of
//! the list differ (a replica joined or left within the last renewal period) two replicas may
//! both want a partition; its lease lets only one have it, and the views agree again one
//! renewal later.

/// The partitions of `count` that `me` should hold, given the live replicas (any order; `me`
/// counts as live even if its own row is missing from the list).
pub fn assigned(live: &[String], me: &str, count: u32) -> Vec<u32> {
    let mut members: Vec<&str> = live.iter().map(String::as_str).collect();
    if !members.contains(&me) {
        members.push(me);
    }
    members.sort_unstable();
    members.dedup();
    let Some(position) = members.iter().position(|m| *m == me) else {
        return Vec::new();
    };
    let m = members.len() as u32;
    (0..count).filter(|k| k % m == position as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_shares_differ_by_at_most_one() {
        for replicas in 1..=7usize {
            let live: Vec<String> = (0..replicas).map(|i| format!("replica-{i}")).collect();
            for count in 1..=24u32 {
                let shares: Vec<Vec<u32>> =
                    live.iter().map(|me| assigned(&live, me, count)).collect();
                let mut all: Vec<u32> = shares.iter().flatten().copied().collect();
                all.sort_unstable();
                assert_eq!(all, (0..count).collect::<Vec<_>>(), "{replicas} x {count}");
                let sizes: Vec<usize> = shares.iter().map(Vec::len).collect();
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "{replicas} x {count}: {sizes:?}");
            }
        }
    }

    #[test]
    fn the_answer_does_not_depend_on_the_order_of_the_list() {
        let a = names(&["b", "a", "c"]);
        let b = names(&["c", "b", "a"]);
        for me in ["a", "b", "c"] {
            assert_eq!(assigned(&a, me, 12), assigned(&b, me, 12));
        }
        assert_eq!(assigned(&a, "a", 6), vec![0, 3]);
        assert_eq!(assigned(&a, "c", 6), vec![2, 5]);
    }

    #[test]
    fn a_replica_missing_from_the_list_counts_itself_in() {
        assert_eq!(assigned(&[], "me", 4), vec![0, 1, 2, 3]);
        assert_eq!(assigned(&names(&["a"]), "b", 4), vec![1, 3]);
    }
}
