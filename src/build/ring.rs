//! A consistent-hashing ring over the buildkitd replicas, for cache affinity.
//!
//! Like BuildKit's own `examples/kubernetes/consistenthash`, the key is
//! `<repository>:<context path>`, so the builds of one repository land on the
//! daemon that already holds its cache. Each replica owns many virtual points on
//! the ring so that keys spread evenly, and adding a replica moves only the keys
//! that now hash to it (about 1/(N+1) of them).
//!
//! Pure: no IO. The hash is SHA-256, so placement is the same on every platform
//! and every Rust version.

/// Virtual points per replica. 512 keeps the spread over 8 replicas within a few
/// percent of even while building the ring stays well under a millisecond.
pub const DEFAULT_VNODES: usize = 512;

/// A hash ring over named nodes (such as `buildkitd-0` … `buildkitd-3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    nodes: Vec<String>,
    /// (position, index into `nodes`), sorted by position then index.
    points: Vec<(u64, usize)>,
}

fn hash64(text: &str) -> u64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

impl Ring {
    /// A ring over `nodes` with `vnodes` virtual points each (at least one).
    pub fn new(nodes: Vec<String>, vnodes: usize) -> Self {
        let vnodes = vnodes.max(1);
        let mut points: Vec<(u64, usize)> = nodes
            .iter()
            .enumerate()
            .flat_map(|(index, name)| (0..vnodes).map(move |v| (hash64(&format!("{name}#{v}")), index)))
            .collect();
        points.sort_unstable();
        Self { nodes, points }
    }

    /// The ring over the StatefulSet pods `<prefix>-0` … `<prefix>-<replicas-1>`.
    pub fn for_replicas(prefix: &str, replicas: u32) -> Self {
        let nodes = (0..replicas).map(|i| format!("{prefix}-{i}")).collect();
        Self::new(nodes, DEFAULT_VNODES)
    }

    /// The node names, in the order given to [`Ring::new`].
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Every node index once, in ring order starting at the owner of `key`: the
    /// first is the node to use, the rest are the fallover candidates in order.
    /// Empty for an empty ring.
    pub fn candidates(&self, key: &str) -> Vec<usize> {
        if self.points.is_empty() {
            return Vec::new();
        }
        let position = hash64(key);
        let start = self.points.partition_point(|(point, _)| *point < position);
        let mut seen = vec![false; self.nodes.len()];
        let mut order = Vec::with_capacity(self.nodes.len());
        for offset in 0..self.points.len() {
            let (_, index) = self.points[(start + offset) % self.points.len()];
            if !seen[index] {
                seen[index] = true;
                order.push(index);
                if order.len() == self.nodes.len() {
                    break;
                }
            }
        }
        order
    }

    /// The index of the node that owns `key`, or None for an empty ring.
    pub fn owner(&self, key: &str) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let position = hash64(key);
        let start = self.points.partition_point(|(point, _)| *point < position);
        Some(self.points[start % self.points.len()].1)
    }
}

/// The affinity key of a build: `<repository>:<context path>`.
pub fn affinity_key(repository: &str, context: &str) -> String {
    format!("{repository}:{context}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_OWNERS: [usize; 3] = [3, 0, 3];
    const PINNED_ORDER: [usize; 4] = [3, 1, 2, 0];

    fn keys(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| {
                affinity_key(
                    &format!("registry.example.com/team-{}/app-{i}", i % 37),
                    "/workspace/source",
                )
            })
            .collect()
    }

    #[test]
    fn same_key_same_replica() {
        let ring = Ring::for_replicas("buildkitd", 5);
        let again = Ring::for_replicas("buildkitd", 5);
        for key in keys(200) {
            let owner = ring.owner(&key);
            assert!(owner.is_some());
            assert_eq!(owner, ring.owner(&key));
            assert_eq!(
                owner,
                again.owner(&key),
                "placement must not depend on the instance"
            );
            assert_eq!(ring.candidates(&key).first().copied(), owner);
        }
    }

    #[test]
    fn spread_within_twenty_percent_over_eight_replicas() {
        let ring = Ring::for_replicas("buildkitd", 8);
        let mut counts = [0usize; 8];
        for key in keys(10_000) {
            counts[ring.owner(&key).unwrap()] += 1;
        }
        let even = 10_000.0 / 8.0;
        eprintln!("keys per replica over 8 replicas: {counts:?} (even {even})");
        for (node, count) in counts.iter().enumerate() {
            let deviation = (*count as f64 - even).abs() / even;
            assert!(
                deviation <= 0.20,
                "buildkitd-{node} got {count} keys ({:.1}% off even)",
                deviation * 100.0
            );
        }
    }

    #[test]
    fn growing_moves_about_one_in_n_plus_one() {
        let keys = keys(10_000);
        for n in 2..=8u32 {
            let before = Ring::for_replicas("buildkitd", n);
            let after = Ring::for_replicas("buildkitd", n + 1);
            let mut moved = 0usize;
            for key in &keys {
                let (old, new) = (before.owner(key).unwrap(), after.owner(key).unwrap());
                if old != new {
                    moved += 1;
                    // A key only ever moves to the new replica.
                    assert_eq!(new, n as usize, "{key} moved between old replicas");
                }
            }
            let share = moved as f64 / keys.len() as f64;
            let ideal = 1.0 / f64::from(n + 1);
            eprintln!("{n}->{}: moved {share:.4} of keys, ideal {ideal:.4}", n + 1);
            assert!(
                share <= ideal * 1.25,
                "{n}->{}: moved {share:.3}, ideal {ideal:.3}",
                n + 1
            );
            assert!(
                share >= ideal * 0.75,
                "{n}->{}: moved {share:.3}, ideal {ideal:.3}",
                n + 1
            );
        }
    }

    #[test]
    fn fallover_follows_ring_order() {
        let ring = Ring::new(vec!["a".into(), "b".into(), "c".into(), "d".into()], 1);
        // With one point per node the order is the sorted order of their positions.
        let mut positions: Vec<(u64, usize)> = ["a#0", "b#0", "c#0", "d#0"]
            .iter()
            .enumerate()
            .map(|(i, p)| (hash64(p), i))
            .collect();
        positions.sort_unstable();
        let ring_order: Vec<usize> = positions.iter().map(|(_, i)| *i).collect();
        for key in keys(50) {
            let candidates = ring.candidates(&key);
            assert_eq!(candidates.len(), 4);
            let first = ring_order.iter().position(|i| *i == candidates[0]).unwrap();
            let expected: Vec<usize> = (0..4).map(|k| ring_order[(first + k) % 4]).collect();
            assert_eq!(candidates, expected, "fallover must walk the ring clockwise");
        }
    }

    #[test]
    fn fallover_visits_each_replica_once_and_removal_promotes_the_next() {
        let ring = Ring::for_replicas("buildkitd", 4);
        for key in keys(100) {
            let candidates = ring.candidates(&key);
            let mut sorted = candidates.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
            // Without the owner, the key belongs to the owner's ring successor: the
            // fallover order is what the ring would choose if that daemon were gone.
            let owner = candidates[0];
            let others: Vec<String> = (0..4)
                .filter(|i| *i != owner)
                .map(|i| format!("buildkitd-{i}"))
                .collect();
            let smaller = Ring::new(others.clone(), DEFAULT_VNODES);
            let next = &smaller.nodes()[smaller.owner(&key).unwrap()];
            assert_eq!(next, &format!("buildkitd-{}", candidates[1]));
        }
    }

    #[test]
    fn placement_is_pinned_across_releases() {
        // Changing the hash or the virtual-node naming would move every repository to a
        // cold daemon on upgrade: this pins today's placement.
        let ring = Ring::for_replicas("buildkitd", 4);
        let owners: Vec<usize> = [
            "registry.example.com/team/app:/workspace/source",
            "ghcr.io/org/api:/workspace/source/services/api",
            "localhost:5000/x:.",
        ]
        .iter()
        .map(|key| ring.owner(key).unwrap())
        .collect();
        assert_eq!(owners, PINNED_OWNERS);
        assert_eq!(
            ring.candidates("registry.example.com/team/app:/workspace/source"),
            PINNED_ORDER
        );
    }

    #[test]
    fn empty_ring_has_no_owner() {
        let ring = Ring::for_replicas("buildkitd", 0);
        assert_eq!(ring.owner("x"), None);
        assert!(ring.candidates("x").is_empty());
    }
}
