//! Choosing the daemon for a build. Pure: keys and loads in, an order and a choice out.
//!
//! 1. **The order.** Every replica gets a score for the build's affinity key
//!    (`<repository>:<context>`), the first 8 bytes of SHA-256 over the replica name and
//!    the key; the replicas sorted by falling score are the key's order (rendezvous, or
//!    highest-random-weight, hashing). The first is the key's home, where its cache is; the
//!    rest are where it falls over to, in turn. Removing a replica moves only its own keys
//!    (each to its next in order); adding one moves to it only the keys it now scores
//!    highest for, 1/(N+1) of them. docs/build.md has the figures that chose this over a
//!    512-point hash ring.
//! 2. **The spread of a busy repository.** A repository that makes more than its share of
//!    the farm's builds would pile onto its home whatever the bound, so its builds share
//!    the key's first few replicas, least loaded first: one more replica for every
//!    [`SPREAD_STEP`] of a replica's fair share that its builds make among those the daemons
//!    report (running, and each daemon's newest finished ones), and at least one more than
//!    it has builds running. Those replicas keep its cache warm because it builds there
//!    often; a repository built rarely has a share near 0 and keeps its home.
//! 3. **The bounded-load walk** (consistent hashing with bounded loads, Mirrokni, Thorup and
//!    Zadimoghaddam, 2018). A replica is eligible while its active builds are at most
//!    `ceil(c × (total + 1) / N)`; the walk takes the first eligible replica in that
//!    preference. The loads come from the daemons ([`super::history`] asks them, an IO
//!    edge); the walk says which to ask: the key's first [`PROBE_WIDTH`] at once, which is
//!    every replica of a farm up to that size, because the bound needs the farm's total and
//!    asking all costs the same one round trip as asking a few. `total` is the sum of the
//!    answers scaled to N (the true total when every replica answered); a replica that did
//!    not answer counts as full. docs/build.md has the figures behind each choice.
//!
//! `kiln build` and `scripts/bench-affinity` both run this code.

use std::fmt;
use std::ops::Range;

/// The default `--load-factor` c: a replica may run up to 25% more than its fair share of
/// the farm's active builds before builds for its keys go to the next replica in order.
pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;

/// The largest `--load-factor`. Far above it the bound never binds; use 0 to turn it off.
pub const MAX_LOAD_FACTOR: f64 = 100.0;

/// How many replicas the walk asks at once: the key's first 32 in order, so every replica
/// of a farm of up to 32. The bound is a share of the farm's total: a sample of the key's
/// first few misjudges it, and most when the key's home is the busy one (it is in every
/// sample of that key); asking every replica in parallel takes about as long as asking
/// three (docs/build.md has both measured). Beyond 32 the total is estimated from the 32.
pub const PROBE_WIDTH: usize = 32;

/// The most replicas one walk asks (waves after the first only when nobody answered).
pub const MAX_PROBED: usize = 4 * PROBE_WIDTH;

/// How widely a busy repository's builds spread: over `1 + ⌊share × N / SPREAD_STEP⌋` of the
/// key's first replicas (and at least one more than it has builds running), where `share`
/// is the repository's part of the builds the daemons reported. A repository making a
/// tenth of one replica's fair share gets a second replica, one making a replica's whole
/// share 11 (at most N). docs/build.md has the figures that chose a tenth.
pub const SPREAD_STEP: f64 = 0.1;

fn score(node: &str, key: &str) -> u64 {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(node.as_bytes());
    // A separator no name contains, so ("a-1", "0:x") and ("a-10", ":x") differ.
    context.update(&[0]);
    context.update(key.as_bytes());
    let digest = context.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// Every index of `nodes` once, best first for `key`: sorted by falling score, ties (which
/// SHA-256 makes vanishingly rare) by index.
pub fn order(nodes: &[String], key: &str) -> Vec<usize> {
    let mut scored: Vec<(u64, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(index, node)| (score(node, key), index))
        .collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, index)| index).collect()
}

/// The order of the StatefulSet pods `<prefix>-0` … `<prefix>-<replicas-1>` for `key`, as
/// pod ordinals.
pub fn replica_order(prefix: &str, replicas: u32, key: &str) -> Vec<u32> {
    let nodes: Vec<String> = (0..replicas).map(|i| format!("{prefix}-{i}")).collect();
    order(&nodes, key)
        .into_iter()
        .map(|index| u32::try_from(index).unwrap_or(u32::MAX))
        .collect()
}

/// The affinity key of a build: `<repository>:<context path>`.
pub fn affinity_key(repository: &str, context: &str) -> String {
    format!("{repository}:{context}")
}

/// What one daemon reported: its builds, and how many of them are for the repository being
/// built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Builds it is running.
    pub active: u32,
    /// Of those, builds of this build's repository.
    pub active_same: u32,
    /// Finished builds it reported: its newest, up to [`super::history::FINISHED_LIMIT`]
    /// (from a daemon before v0.20, any of them).
    pub finished: u32,
    /// Of those, builds of this build's repository.
    pub finished_same: u32,
}

impl Load {
    /// A daemon running `active` builds, none of them for this repository, with no history.
    pub fn active(active: u32) -> Self {
        Self {
            active,
            ..Self::default()
        }
    }

    /// Its builds of this repository, running and finished.
    pub fn same(&self) -> u32 {
        self.active_same.saturating_add(self.finished_same)
    }

    /// Every build it reported, running and finished.
    pub fn reported(&self) -> u32 {
        self.active.saturating_add(self.finished)
    }
}

/// What asking one daemon for its load gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// It answered.
    Active(Load),
    /// It did not answer (why, in words): it counts as full.
    NoAnswer(String),
}

impl Probe {
    /// A daemon that answered with `active` builds, none of them for this repository.
    pub fn active(active: u32) -> Self {
        Self::Active(Load::active(active))
    }
}

/// How the walk weighs load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// c in `ceil(c × (total + 1) / N)`; 0 turns load-awareness off (pure hashing).
    pub load_factor: f64,
    /// Replicas asked at once (at least 1).
    pub probe_width: usize,
    /// The most replicas one walk asks.
    pub max_probed: usize,
    /// [`SPREAD_STEP`]; 0 keeps every repository on its home while the home is eligible.
    pub spread_step: f64,
}

impl Policy {
    /// The defaults with load factor `c`.
    pub fn with_load_factor(load_factor: f64) -> Self {
        Self {
            load_factor,
            probe_width: PROBE_WIDTH,
            max_probed: MAX_PROBED,
            spread_step: SPREAD_STEP,
        }
    }

    /// True when the walk asks daemons for their load at all.
    pub fn load_aware(&self, candidates: usize) -> bool {
        self.load_factor > 0.0 && candidates > 1
    }
}

/// What one asked candidate was found to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Within the bound with this many active builds.
    Eligible(u32),
    /// Over the bound with this many active builds.
    OverBound(u32),
    /// No answer: counted as full.
    NoAnswer(String),
}

/// Why the choice is not the first eligible replica in the walk's preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Load-awareness is off (`--load-factor 0`) or there is one daemon.
    Off,
    /// No replica asked was within the bound: the least loaded that answered.
    LeastLoaded,
    /// No replica answered: the key's order as it is.
    NoLoads,
}

/// The outcome of the walk.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Candidate positions (into the key's order), best first: the chosen one, then the
    /// other eligible ones, then those not asked, then those over the bound, then those that
    /// did not answer, each group in the walk's preference (the spread's replicas by load,
    /// then the key's order). Fallover and reruns follow it.
    pub order: Vec<usize>,
    /// One verdict per asked position, in the key's order (position i is `verdicts[i]`).
    pub verdicts: Vec<Verdict>,
    /// The bound the loads were held to, when there was one.
    pub bound: Option<u32>,
    /// The farm's active builds the bound was computed from, and whether every replica
    /// answered (exact) or it was estimated from those that did.
    pub total: Option<(f64, bool)>,
    /// Set when the choice is not the first eligible replica in the walk's preference.
    pub fallback: Option<Fallback>,
    /// How the repository's builds were spread, when over more than its home.
    pub spread: Option<Spread>,
}

/// A busy repository's builds shared by the key's first few replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    /// The key's first `over` replicas take its builds, least loaded first.
    pub over: usize,
    /// Builds of the repository among those the daemons reported.
    pub same: u32,
    /// Every build the daemons reported, running and finished.
    pub reported: u32,
}

impl Choice {
    /// The chosen candidate position.
    pub fn chosen(&self) -> usize {
        self.order.first().copied().unwrap_or(0)
    }

    /// One line for the log: the chosen daemon, its load, and each skipped one with why.
    /// `names[i]` names candidate position i.
    pub fn describe(&self, names: &[String]) -> String {
        let name = |position: usize| names.get(position).map_or("?", String::as_str);
        let chosen = self.chosen();
        let mut line = format!("chose buildkitd {}", name(chosen));
        match (self.verdicts.get(chosen), self.fallback) {
            (_, Some(Fallback::Off)) => line.push_str(" (the key's first daemon; load not asked)"),
            (_, Some(Fallback::NoLoads)) => {
                line.push_str(" (the key's first daemon: no daemon reported its load)")
            }
            (Some(Verdict::OverBound(load) | Verdict::Eligible(load)), Some(Fallback::LeastLoaded)) => line
                .push_str(&format!(
                    " ({}; every daemon asked is over the bound {}, this one is the least loaded)",
                    builds(*load),
                    self.bound.unwrap_or(0)
                )),
            (Some(Verdict::Eligible(load)), _) => line.push_str(&format!(
                " ({}, bound {}{}{})",
                builds(*load),
                self.bound.unwrap_or(0),
                self.total_text(),
                self.spread_text()
            )),
            _ => {}
        }
        let skipped: Vec<String> = self
            .order
            .iter()
            .filter(|position| **position < chosen)
            .chain(
                self.order
                    .iter()
                    .filter(|p| **p > chosen && self.skipped_after(**p)),
            )
            .filter_map(|position| {
                let why = match self.verdicts.get(*position)? {
                    Verdict::OverBound(load) => format!("{}, over the bound", builds(*load)),
                    Verdict::NoAnswer(reason) => format!("no answer: {reason}"),
                    // Only the spread passes over an eligible replica: a busier one.
                    Verdict::Eligible(load) => format!("{}, busier", builds(*load)),
                };
                Some((*position, why))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .map(|(position, why)| format!("{} ({why})", name(position)))
            .collect();
        if !skipped.is_empty() {
            line.push_str("; skipped ");
            line.push_str(&skipped.join(", "));
        }
        line
    }

    /// Asked positions after the chosen one are listed as skipped only when they were
    /// full: with the least-loaded fallback, every asked daemon was passed over.
    fn skipped_after(&self, position: usize) -> bool {
        self.fallback == Some(Fallback::LeastLoaded)
            && matches!(
                self.verdicts.get(position),
                Some(Verdict::OverBound(_) | Verdict::NoAnswer(_))
            )
    }

    fn spread_text(&self) -> String {
        match self.spread {
            Some(spread) if self.chosen() < spread.over => format!(
                "; the least loaded of the key's first {}, as its repository made {} of the {} builds the daemons reported",
                spread.over, spread.same, spread.reported
            ),
            Some(spread) => format!(
                "; the key's first {}, which share its repository's builds ({} of the {} the daemons reported), are over the bound",
                spread.over, spread.same, spread.reported
            ),
            None => String::new(),
        }
    }

    fn total_text(&self) -> String {
        match self.total {
            Some((total, true)) => format!(" for {total:.0} active on the farm"),
            Some((total, false)) => format!(" for about {total:.0} active on the farm"),
            None => String::new(),
        }
    }
}

fn builds(count: u32) -> String {
    if count == 1 {
        "1 active build".into()
    } else {
        format!("{count} active builds")
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Eligible(load) => write!(f, "{}, within the bound", builds(*load)),
            Self::OverBound(load) => write!(f, "{}, over the bound", builds(*load)),
            Self::NoAnswer(reason) => write!(f, "no answer: {reason}"),
        }
    }
}

/// The next thing the walk needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Ask these candidate positions (in the key's order) for their load, all at once, and
    /// call [`step`] again with the answers appended.
    Ask(Range<usize>),
    /// The walk is done.
    Chosen(Choice),
}

/// The bound `ceil(c × (total + 1) / n)` for an (estimated) farm total.
pub fn bound(load_factor: f64, total: f64, replicas: usize) -> u32 {
    let value = (load_factor * (total + 1.0) / replicas.max(1) as f64).ceil();
    if value.is_finite() && value >= 0.0 {
        // Saturates at u32::MAX; the bound is a count of builds.
        value.min(f64::from(u32::MAX)) as u32
    } else {
        u32::MAX
    }
}

/// One step of the walk over `candidates` replicas in the key's order, with `probes[i]`
/// the answer of position i for the positions asked so far (always a prefix of the order).
pub fn step(policy: &Policy, candidates: usize, probes: &[Probe]) -> Step {
    if !policy.load_aware(candidates) {
        return Step::Chosen(Choice {
            order: (0..candidates).collect(),
            verdicts: Vec::new(),
            bound: None,
            total: None,
            fallback: Some(Fallback::Off),
            spread: None,
        });
    }
    let width = policy.probe_width.max(1);
    let limit = policy.max_probed.max(width).min(candidates);
    let asked = probes.len().min(candidates);
    if asked == 0 {
        return Step::Ask(0..width.min(limit));
    }
    let probes = &probes[..asked];
    let answered: Vec<&Load> = probes
        .iter()
        .filter_map(|probe| match probe {
            Probe::Active(load) => Some(load),
            Probe::NoAnswer(_) => None,
        })
        .collect();
    let estimate = (!answered.is_empty()).then(|| {
        let sum: f64 = answered.iter().map(|load| f64::from(load.active)).sum();
        let exact = answered.len() == candidates;
        (sum * candidates as f64 / answered.len() as f64, exact)
    });
    let bound = estimate.map(|(total, _)| bound(policy.load_factor, total, candidates));
    let verdicts: Vec<Verdict> = probes
        .iter()
        .map(|probe| match (probe, bound) {
            (Probe::Active(load), Some(bound)) if load.active <= bound => Verdict::Eligible(load.active),
            (Probe::Active(load), _) => Verdict::OverBound(load.active),
            (Probe::NoAnswer(reason), _) => Verdict::NoAnswer(reason.clone()),
        })
        .collect();
    let spread = spread(policy, candidates, &answered).and_then(|spread| {
        // Only the replicas asked so far can share the builds (a farm wider than one wave).
        let over = spread.over.min(asked);
        (over > 1).then_some(Spread { over, ..spread })
    });
    let preference = preference(&verdicts, candidates, spread.map_or(1, |s| s.over));
    let first_eligible = preference
        .iter()
        .copied()
        .find(|p| matches!(verdicts.get(*p), Some(Verdict::Eligible(_))));
    if first_eligible.is_none() && asked < limit {
        return Step::Ask(asked..(asked + width).min(limit));
    }
    let (chosen, fallback) = match first_eligible {
        Some(position) => (position, None),
        None => match least_loaded(&verdicts) {
            Some(position) => (position, Some(Fallback::LeastLoaded)),
            None => (0, Some(Fallback::NoLoads)),
        },
    };
    let class = |position: usize| match verdicts.get(position) {
        Some(Verdict::Eligible(_)) => 0,
        None => 1,
        Some(Verdict::OverBound(_)) => 2,
        Some(Verdict::NoAnswer(_)) => 3,
    };
    let mut order: Vec<usize> = if fallback == Some(Fallback::NoLoads) {
        (0..candidates).collect()
    } else {
        preference
    };
    order.retain(|p| *p != chosen);
    if fallback != Some(Fallback::NoLoads) {
        order.sort_by_key(|position| class(*position));
    }
    order.insert(0, chosen);
    Step::Chosen(Choice {
        order,
        verdicts,
        bound,
        total: estimate,
        fallback,
        spread,
    })
}

/// How many of the key's first replicas share its repository's builds, from what the
/// daemons that answered reported; None when it is one (the home).
fn spread(policy: &Policy, candidates: usize, answered: &[&Load]) -> Option<Spread> {
    let same: u32 = answered
        .iter()
        .map(|load| load.same())
        .fold(0, u32::saturating_add);
    let reported: u32 = answered
        .iter()
        .map(|load| load.reported())
        .fold(0, u32::saturating_add);
    let running: u32 = answered
        .iter()
        .map(|load| load.active_same)
        .fold(0, u32::saturating_add);
    if policy.spread_step.is_nan() || policy.spread_step <= 0.0 || reported == 0 {
        return None;
    }
    let share = f64::from(same.min(reported)) / f64::from(reported);
    let by_share = (share * candidates as f64 / policy.spread_step).floor();
    // A count of replicas: a tiny step makes it infinite, which is every replica.
    let by_share = if by_share.is_finite() {
        by_share.min(candidates as f64) as usize
    } else {
        candidates
    };
    // Its running builds each hold a replica; the next build gets one more.
    let running = usize::try_from(running).unwrap_or(usize::MAX);
    let over = by_share
        .saturating_add(1)
        .max(running.saturating_add(1))
        .min(candidates);
    (over > 1).then_some(Spread { over, same, reported })
}

/// Every position, in the order the walk prefers them: the first `over` (the spread) by
/// falling room (least active builds first, the earlier on a tie; those that did not answer
/// last), then the rest in the key's order.
fn preference(verdicts: &[Verdict], candidates: usize, over: usize) -> Vec<usize> {
    let head = over.min(verdicts.len()).max(1).min(candidates);
    let load = |position: usize| match verdicts.get(position) {
        Some(Verdict::Eligible(load) | Verdict::OverBound(load)) => u64::from(*load),
        _ => u64::MAX,
    };
    let mut order: Vec<usize> = (0..candidates).collect();
    order[..head].sort_by_key(|position| (load(*position), *position));
    order
}

/// The least loaded answering position, the first in order among equals.
fn least_loaded(verdicts: &[Verdict]) -> Option<usize> {
    verdicts
        .iter()
        .enumerate()
        .filter_map(|(position, verdict)| match verdict {
            Verdict::Eligible(load) | Verdict::OverBound(load) => Some((*load, position)),
            Verdict::NoAnswer(_) => None,
        })
        .min()
        .map(|(_, position)| position)
}

/// Run the walk to the end with `ask` answering each wave; for callers that have the
/// loads at hand (the simulation). `ask` gets the positions of one wave.
pub fn walk(policy: &Policy, candidates: usize, mut ask: impl FnMut(Range<usize>) -> Vec<Probe>) -> Choice {
    let mut probes = Vec::new();
    loop {
        match step(policy, candidates, &probes) {
            Step::Chosen(choice) => return choice,
            Step::Ask(range) => {
                let wanted = range.len();
                let mut answers = ask(range);
                answers.resize(wanted, Probe::NoAnswer("no answer".into()));
                probes.extend(answers);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn nodes(n: u32) -> Vec<String> {
        (0..n).map(|i| format!("buildkitd-{i}")).collect()
    }

    #[test]
    fn same_key_same_order_every_time() {
        for key in keys(100) {
            let first = replica_order("buildkitd", 5, &key);
            assert_eq!(first, replica_order("buildkitd", 5, &key));
            let mut sorted = first.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3, 4], "each replica exactly once");
        }
        assert!(replica_order("buildkitd", 0, "x").is_empty());
    }

    #[test]
    fn spread_within_ten_percent_over_eight_replicas() {
        let mut counts = [0usize; 8];
        for key in keys(10_000) {
            counts[replica_order("buildkitd", 8, &key)[0] as usize] += 1;
        }
        let even = 10_000.0 / 8.0;
        for (node, count) in counts.iter().enumerate() {
            let deviation = (*count as f64 - even).abs() / even;
            assert!(
                deviation <= 0.10,
                "buildkitd-{node} got {count} keys ({deviation:.3} off even)"
            );
        }
    }

    #[test]
    fn growing_moves_only_keys_to_the_new_replica_about_one_in_n_plus_one() {
        let keys = keys(10_000);
        for n in 2..=9u32 {
            let mut moved = 0usize;
            for key in &keys {
                let (old, new) = (
                    replica_order("buildkitd", n, key),
                    replica_order("buildkitd", n + 1, key),
                );
                if old[0] != new[0] {
                    moved += 1;
                    assert_eq!(new[0], n, "{key} moved between old replicas");
                }
                // The old replicas keep their relative order: fallover is stable too.
                let without_new: Vec<u32> = new.iter().copied().filter(|i| *i != n).collect();
                assert_eq!(without_new, old);
            }
            let share = moved as f64 / keys.len() as f64;
            let ideal = 1.0 / f64::from(n + 1);
            assert!(
                (share - ideal).abs() <= ideal * 0.15,
                "{n}->{}: moved {share:.3}, ideal {ideal:.3}",
                n + 1
            );
        }
    }

    #[test]
    fn removing_the_home_promotes_the_next_in_order() {
        let all = nodes(6);
        for key in keys(200) {
            let order_all = order(&all, &key);
            let home = order_all[0];
            let rest: Vec<String> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != home)
                .map(|(_, n)| n.clone())
                .collect();
            let order_rest = order(&rest, &key);
            assert_eq!(rest[order_rest[0]], all[order_all[1]]);
        }
    }

    #[test]
    fn placement_is_pinned_across_releases() {
        // Changing the hash would move every repository to a cold daemon on upgrade.
        assert_eq!(
            replica_order("buildkitd", 4, "registry.example.com/team/app:/workspace/source"),
            [3, 2, 1, 0]
        );
        let homes: Vec<u32> = [
            "ghcr.io/org/api:/workspace/source/services/api",
            "localhost:5000/x:.",
        ]
        .iter()
        .map(|key| replica_order("buildkitd", 4, key)[0])
        .collect();
        assert_eq!(homes, [1, 3]);
    }

    fn policy(c: f64) -> Policy {
        Policy::with_load_factor(c)
    }

    fn chosen(step: Step) -> Choice {
        match step {
            Step::Chosen(choice) => choice,
            Step::Ask(range) => panic!("still asking {range:?}"),
        }
    }

    #[test]
    fn off_or_one_daemon_asks_nobody() {
        let choice = chosen(step(&policy(0.0), 4, &[]));
        assert_eq!(choice.order, [0, 1, 2, 3]);
        assert_eq!(choice.fallback, Some(Fallback::Off));
        let choice = chosen(step(&policy(1.25), 1, &[]));
        assert_eq!(choice.order, [0]);
    }

    /// A walk that asks three at a time (kiln's default before it asked every replica).
    fn three_at_a_time() -> Policy {
        Policy {
            load_factor: 1.25,
            probe_width: 3,
            max_probed: 12,
            spread_step: SPREAD_STEP,
        }
    }

    #[test]
    fn the_default_asks_every_replica_at_once_and_holds_them_to_the_farms_true_total() {
        let p = policy(1.25);
        for n in [2, 8, 10, PROBE_WIDTH] {
            assert_eq!(step(&p, n, &[]), Step::Ask(0..n), "{n} replicas");
        }
        assert_eq!(step(&p, 1000, &[]), Step::Ask(0..PROBE_WIDTH));
        // A busy home (3) and a quiet farm: 3 + 2 + 2 = 7 builds on 9 replicas, bound
        // ceil(1.25 · 8 / 9) = 2. The key's first three alone (3, 2, 2) would have
        // estimated 21 and a bound of 4, keeping the busy home eligible.
        let loads: Vec<Probe> = [3, 2, 2, 0, 0, 0, 0, 0, 0].map(Probe::active).to_vec();
        let choice = chosen(step(&p, 9, &loads));
        assert_eq!(choice.total, Some((7.0, true)));
        assert_eq!((choice.bound, choice.chosen()), (Some(2), 1));
        assert_eq!(choice.order, [1, 2, 3, 4, 5, 6, 7, 8, 0]);
        let first_three = chosen(step(&three_at_a_time(), 9, &loads[..3]));
        assert_eq!((first_three.bound, first_three.chosen()), (Some(4), 0));
        assert_eq!(first_three.total, Some((21.0, false)));
        // A down replica: the total is scaled from those that answered (8 answers of 9).
        let mut down = loads.clone();
        down[4] = Probe::NoAnswer("connection refused".into());
        let choice = chosen(step(&p, 9, &down));
        assert_eq!(choice.total, Some((7.0 * 9.0 / 8.0, false)));
        assert_eq!((choice.bound, choice.chosen()), (Some(2), 1));
        assert_eq!(*choice.order.last().unwrap(), 4, "the silent one last");
    }

    #[test]
    fn asks_in_waves_along_the_order_and_stops_at_the_first_eligible() {
        let p = three_at_a_time();
        assert_eq!(step(&p, 8, &[]), Step::Ask(0..3));
        // Home has 1 build, others idle: total ≈ 1·8/3, bound ceil(1.25·3.67/8) = 1: home eligible.
        let choice = chosen(step(
            &p,
            8,
            &[Probe::active(1), Probe::active(0), Probe::active(0)],
        ));
        assert_eq!(choice.chosen(), 0);
        assert_eq!(choice.bound, Some(1));
        // With c ≥ 1 one of those that answered is always within the bound (the least
        // loaded is at most the mean): the walk goes on only past silence.
        let busy = [
            Probe::active(9),
            Probe::active(9),
            Probe::NoAnswer("timeout".into()),
        ];
        assert_eq!(chosen(step(&p, 8, &busy)).chosen(), 0);
        let silent: Vec<Probe> = (0..3).map(|_| Probe::NoAnswer("timeout".into())).collect();
        assert_eq!(step(&p, 8, &silent), Step::Ask(3..6));
        let mut later = silent.clone();
        later.extend([Probe::active(4), Probe::active(0), Probe::active(0)]);
        let choice = chosen(step(&p, 8, &later));
        // total ≈ 4·8/3 ≈ 10.7, bound ceil(1.25·11.7/8) = 2: position 3 is over, 4 within.
        assert_eq!((choice.chosen(), choice.bound), (4, Some(2)));
        assert_eq!(choice.order, [4, 5, 6, 7, 3, 0, 1, 2]);
    }

    #[test]
    fn bounded_load_never_picks_a_replica_over_its_bound_while_one_within_exists() {
        // Every load vector over 5 replicas with loads 0..=4, all asked at once: the choice
        // is the first position within the bound, and everything before it is over it.
        let p = Policy {
            load_factor: 1.25,
            probe_width: 5,
            max_probed: 5,
            spread_step: SPREAD_STEP,
        };
        let mut loads = [0u32; 5];
        for code in 0..5u32.pow(5) {
            let mut rest = code;
            for slot in &mut loads {
                *slot = rest % 5;
                rest /= 5;
            }
            let probes: Vec<Probe> = loads.iter().map(|l| Probe::active(*l)).collect();
            let choice = chosen(step(&p, 5, &probes));
            let total: u32 = loads.iter().sum();
            let limit = bound(1.25, f64::from(total), 5);
            assert_eq!(choice.bound, Some(limit));
            assert_eq!(choice.total, Some((f64::from(total), true)));
            let first = loads
                .iter()
                .position(|l| *l <= limit)
                .expect("c > 1: someone is within");
            assert_eq!(choice.chosen(), first, "loads {loads:?}, bound {limit}");
            assert!(loads[..first].iter().all(|l| *l > limit));
            assert_eq!(choice.fallback, None);
            // The rest of the order: eligible ones in order, then the full ones in order.
            let eligible: Vec<usize> = (0..5).filter(|i| *i != first && loads[*i] <= limit).collect();
            let full: Vec<usize> = (0..5).filter(|i| loads[*i] > limit).collect();
            assert_eq!(choice.order[1..], [eligible, full].concat()[..]);
        }
    }

    #[test]
    fn silent_daemons_count_as_full_and_the_walk_is_bounded() {
        let silent = |range: Range<usize>| -> Vec<Probe> {
            range
                .map(|_| Probe::NoAnswer("no answer within 500ms".into()))
                .collect()
        };
        for (p, n, waves) in [
            (policy(1.25), 20, vec![(0, 20)]),
            (policy(1.25), 200, vec![(0, 32), (32, 64), (64, 96), (96, 128)]),
            (three_at_a_time(), 20, vec![(0, 3), (3, 6), (6, 9), (9, 12)]),
        ] {
            let mut asked = Vec::new();
            let choice = walk(&p, n, |range| {
                asked.push((range.start, range.end));
                silent(range)
            });
            assert_eq!(asked, waves);
            assert_eq!(choice.fallback, Some(Fallback::NoLoads));
            assert_eq!(
                choice.order,
                (0..n).collect::<Vec<_>>(),
                "nothing answered: the key's order"
            );
        }

        // The bound comes from the answers: total ≈ 23·12/3 = 92, bound ceil(93/12) = 8.
        let p = Policy {
            load_factor: 1.0,
            probe_width: 3,
            max_probed: 3,
            spread_step: SPREAD_STEP,
        };
        let probes: Vec<Probe> = [9, 5, 9].iter().map(|l| Probe::active(*l)).collect();
        let choice = chosen(step(&p, 12, &probes));
        assert_eq!((choice.chosen(), choice.bound), (1, Some(8)));
        let over = [Probe::active(20), Probe::NoAnswer("x".into()), Probe::active(10)];
        let choice = chosen(step(&p, 12, &over));
        // total ≈ 30·12/2 = 180, bound 16: position 2 is within.
        assert_eq!(choice.chosen(), 2);
        assert_eq!(choice.order[..3], [2, 3, 4], "then the positions not asked");
        assert_eq!(*choice.order.last().unwrap(), 1, "the silent one last");

        // With c ≥ 1 the least loaded answer is always within the bound (it is at most the
        // mean); below 1 everyone can be over it, and the least loaded one is taken.
        let p = Policy {
            load_factor: 0.5,
            probe_width: 3,
            max_probed: 3,
            spread_step: SPREAD_STEP,
        };
        let probes: Vec<Probe> = [6, 4, 4].iter().map(|l| Probe::active(*l)).collect();
        let choice = chosen(step(&p, 3, &probes));
        assert_eq!(
            (choice.chosen(), choice.fallback),
            (1, Some(Fallback::LeastLoaded))
        );
        assert_eq!(choice.order, [1, 0, 2]);
    }

    #[test]
    fn the_log_line_names_the_choice_its_load_and_every_skip() {
        let p = policy(1.25);
        let names: Vec<String> = (0..8).map(|i| format!("buildkitd-{i}:1234")).collect();
        // Every daemon answered: the farm's total, exact.
        let probes: Vec<Probe> = [6, 2, 1, 0, 0, 0, 0, 0].map(Probe::active).to_vec();
        let choice = chosen(step(&p, 8, &probes));
        assert_eq!(
            choice.describe(&names),
            "chose buildkitd buildkitd-1:1234 (2 active builds, bound 2 for 9 active on the farm); \
             skipped buildkitd-0:1234 (6 active builds, over the bound)"
        );
        // One did not: the total is scaled from the other seven, and says "about".
        let mut probes = probes;
        probes[1] = Probe::NoAnswer("no answer within 500ms".into());
        let choice = chosen(step(&p, 8, &probes));
        assert_eq!(choice.chosen(), 2);
        let line = choice.describe(&names);
        assert_eq!(
            line,
            "chose buildkitd buildkitd-2:1234 (1 active build, bound 2 for about 8 active on the farm); \
             skipped buildkitd-0:1234 (6 active builds, over the bound), \
             buildkitd-1:1234 (no answer: no answer within 500ms)"
        );
        assert!(!line.contains('\n'));
        let off = chosen(step(&policy(0.0), 8, &[]));
        assert_eq!(
            off.describe(&names),
            "chose buildkitd buildkitd-0:1234 (the key's first daemon; load not asked)"
        );
    }

    /// A daemon's answer: `active` builds, `same` of them of this repository, and `finished`
    /// finished builds, `finished_same` of them of this repository.
    fn load(active: u32, same: u32, finished: u32, finished_same: u32) -> Probe {
        Probe::Active(Load {
            active,
            active_same: same,
            finished,
            finished_same,
        })
    }

    #[test]
    fn a_busy_repository_spreads_over_its_first_replicas_least_loaded_first() {
        let p = policy(1.25);
        // 8 daemons, 50 finished builds each; loads 3, 2, 1, 2, 2, 2, 2, 2 (16 active,
        // bound ceil(1.25·17/8) = 3: everyone eligible). Of the 416 builds reported, 61 are
        // of the repository: 14.7%, so 1 + ⌊0.147·8/0.1⌋ = 12, capped at the 8 replicas.
        let loads = [3, 2, 1, 2, 2, 2, 2, 2];
        let probes: Vec<Probe> = loads
            .iter()
            .enumerate()
            .map(|(i, l)| load(*l, u32::from(i == 0), 50, if i < 3 { 20 } else { 0 }))
            .collect();
        let choice = chosen(step(&p, 8, &probes));
        assert_eq!(
            choice.spread,
            Some(Spread {
                over: 8,
                same: 61,
                reported: 416
            })
        );
        assert_eq!(choice.chosen(), 2, "the least loaded of all eight");
        assert_eq!(
            choice.order,
            [2, 1, 3, 4, 5, 6, 7, 0],
            "then by load, the key's order on ties"
        );

        // A repository with 3 of the 416: 0.7%, 1 + ⌊0.58⌋ = 1; none running: its home.
        let rare: Vec<Probe> = loads
            .iter()
            .enumerate()
            .map(|(i, l)| load(*l, 0, 50, u32::from(i < 3)))
            .collect();
        let choice = chosen(step(&p, 8, &rare));
        assert_eq!((choice.spread, choice.chosen()), (None, 0));
        assert_eq!(choice.order, [0, 1, 2, 3, 4, 5, 6, 7]);

        // The same, but 2 of its builds running (on the home): 1 + 2 = 3 replicas share it.
        let mut running = rare.clone();
        running[0] = load(3, 2, 50, 1);
        let choice = chosen(step(&p, 8, &running));
        assert_eq!(choice.spread.map(|s| s.over), Some(3));
        assert_eq!(choice.chosen(), 2);
        assert_eq!(choice.order, [2, 1, 0, 3, 4, 5, 6, 7]);

        // Spreading off (the step 0): the walk, the home.
        let off = Policy {
            spread_step: 0.0,
            ..policy(1.25)
        };
        let choice = chosen(step(&off, 8, &probes));
        assert_eq!((choice.spread, choice.chosen()), (None, 0));
    }

    #[test]
    fn the_spread_never_takes_a_replica_over_its_bound_while_one_within_exists() {
        // Every load vector over 4 replicas with loads 0..=4, and for each a few shares of
        // the repository: the chosen one is within the bound; it is the least loaded within
        // the bound among the spread's replicas when one is, else the first within the bound
        // after them, in the key's order.
        let p = Policy {
            probe_width: 4,
            max_probed: 4,
            ..policy(1.25)
        };
        let mut loads = [0u32; 4];
        for code in 0..5u32.pow(4) {
            let mut rest = code;
            for slot in &mut loads {
                *slot = rest % 5;
                rest /= 5;
            }
            for same in [0u32, 1, 3, 8, 20, 40] {
                // The repository's running builds (on the second replica), from none to all.
                let running = (same % 3).min(loads[1]);
                let probes: Vec<Probe> = loads
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        let finished_same = if i == 0 {
                            same.min(10)
                        } else {
                            same.saturating_sub(10).min(10)
                        };
                        load(*l, if i == 1 { running } else { 0 }, 10, finished_same)
                    })
                    .collect();
                let choice = chosen(step(&p, 4, &probes));
                let limit = choice.bound.unwrap();
                let within: Vec<usize> = (0..4).filter(|i| loads[*i] <= limit).collect();
                let c = choice.chosen();
                assert!(
                    loads[c] <= limit,
                    "loads {loads:?}, same {same}: chose {c} over {limit}"
                );
                let over = choice.spread.map_or(1, |s| s.over);
                let head: Vec<usize> = within.iter().copied().filter(|i| *i < over).collect();
                let expected = head
                    .iter()
                    .copied()
                    .min_by_key(|i| (loads[*i], *i))
                    .unwrap_or_else(|| within[0]);
                assert_eq!(c, expected, "loads {loads:?}, same {same}, over {over}");
                if choice.spread.is_none() {
                    assert_eq!(c, within[0], "no spread: the first within the bound");
                }
            }
        }
    }

    #[test]
    fn a_spread_whose_replicas_are_all_over_the_bound_says_so_and_a_wave_caps_it() {
        let p = policy(1.25);
        let names: Vec<String> = (0..8).map(|i| format!("buildkitd-{i}:1234")).collect();
        // The key's first 3 run 3 builds each, 2 of them the repository's: 9 on the farm,
        // bound ceil(1.25·10/8) = 2; 50 finished builds each, none the repository's. Its
        // share (6 of 409) gives 1 + 1 replicas, its 6 running builds 1 + 6 = 7: position 3,
        // inside the spread and the least loaded, takes it.
        let mut probes: Vec<Probe> = (0..3).map(|_| load(3, 2, 50, 0)).collect();
        probes.extend((3..8).map(|_| load(0, 0, 50, 0)));
        let choice = chosen(step(&p, 8, &probes));
        assert_eq!((choice.chosen(), choice.spread.map(|s| s.over)), (3, Some(7)));
        let line = choice.describe(&names);
        assert!(
            line.starts_with(
                "chose buildkitd buildkitd-3:1234 (0 active builds, bound 2 for 9 active on the farm; \
                 the least loaded of the key's first 7"
            ),
            "{line}"
        );
        // With only 2 of them running, the spread is 3 and everyone in it is over the bound:
        // the first within the bound after them takes it, and the line says why.
        let mut probes: Vec<Probe> = (0..3).map(|_| load(3, 0, 50, 0)).collect();
        probes[0] = load(3, 2, 50, 0);
        probes.extend((3..8).map(|_| load(0, 0, 50, 0)));
        let choice = chosen(step(&p, 8, &probes));
        assert_eq!((choice.chosen(), choice.spread.map(|s| s.over)), (3, Some(3)));
        assert_eq!(
            choice.describe(&names),
            "chose buildkitd buildkitd-3:1234 (0 active builds, bound 2 for 9 active on the farm; \
             the key's first 3, which share its repository's builds (2 of the 409 the daemons reported), \
             are over the bound); skipped buildkitd-0:1234 (3 active builds, over the bound), \
             buildkitd-1:1234 (3 active builds, over the bound), buildkitd-2:1234 (3 active builds, over the bound)"
        );
        // A wave of 3 in a farm of 12: the spread cannot reach past the daemons asked.
        let narrow = Policy {
            probe_width: 3,
            max_probed: 12,
            ..policy(1.25)
        };
        let wave: Vec<Probe> = (0..3)
            .map(|i| load(1, 0, 10, if i == 0 { 10 } else { 0 }))
            .collect();
        let choice = chosen(step(&narrow, 12, &wave));
        assert_eq!(
            choice.spread.map(|s| s.over),
            Some(3),
            "10 of 33 would spread over 12"
        );
        assert_eq!(choice.chosen(), 0, "equal loads: the key's order");
    }

    #[test]
    fn bound_is_the_papers() {
        assert_eq!(bound(1.25, 0.0, 8), 1);
        assert_eq!(bound(1.25, 31.0, 8), 5);
        assert_eq!(bound(1.0, 7.0, 8), 1);
        assert_eq!(bound(100.0, f64::MAX, 1), u32::MAX);
    }
}
