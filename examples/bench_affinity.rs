//! Benchmark for the daemon choice (run by scripts/bench-affinity). Not a timed test.
//!
//! 1. **A month in a farm**, a discrete-event simulation. 2,000 repositories build with
//!    Zipf popularity (s = 1.1) on a weekday/night/weekend arrival profile; each has its own
//!    warm build duration, and a cold build (no cache for the repository on that replica)
//!    takes 3× as long. 8 replicas, each an LRU cache of a fixed number of repositories and
//!    a processor shared by its builds (a build runs at full speed while the replica runs at
//!    most `CORES` builds, slower beyond). On day 9 the farm grows to 10 replicas; on day 17
//!    one replica is down for a day (its builds are rerun elsewhere, it comes back with an
//!    empty cache). Four strategies see the same arrivals, side by side:
//!    - `random`: a plain Service;
//!    - `sticky`: buildx's sticky mode, hashing the context path alone over the running pods;
//!    - `hash`: kiln's rendezvous hashing of `<repository>:<context>` (`--load-factor 0`);
//!    - `bounded`: kiln's default, the same order with bounded load (c = 1.25).
//!
//!    kiln's two call `kiln::build::choose` itself, the code `kiln build` runs: the
//!    simulation answers the walk's load questions from its own replicas, as daemons do.
//! 2. **The hash function**: rendezvous hashing (kiln's) against the 512-point SHA-256
//!    ring kiln used before (reproduced here): spread, keys moved by a rescale, and the cost
//!    of one choice (a `kiln build` process computes it once) up to the replica cap.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

use kiln::build::choose::{self, Policy, Probe};

// ---------------------------------------------------------------------------
// Randomness: xorshift64*, seeded, so every run prints the same figures.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn exponential(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (1.0 - self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

// ---------------------------------------------------------------------------
// The workload.

const REPOS: usize = 2_000;
const ZIPF_S: f64 = 1.1;
const REPLICAS: usize = 8;
const GROWN: usize = 10;
/// Builds a replica runs at full speed; beyond, they share it.
const CORES: f64 = 4.0;
/// Repositories whose cache one replica keeps (LRU).
const CACHE: usize = 150;
const COLD_FACTOR: f64 = 3.0;
const DAY: f64 = 86_400.0;
const MONTH: f64 = 30.0 * DAY;
const RESCALE_AT: f64 = 9.0 * DAY;
const DOWN_REPLICA: usize = 3;
const DOWN_AT: f64 = 17.0 * DAY + 9.0 * 3600.0;
const UP_AT: f64 = DOWN_AT + DAY;
/// Builds per second in weekday working hours.
const PEAK_RATE: f64 = 3.6 / 60.0;
/// The Tekton build timeout: a build still running after it is cancelled.
const TIMEOUT: f64 = 3600.0;

struct Repo {
    key: String,
    context: String,
    /// Warm build duration, seconds.
    warm: f64,
}

struct Arrival {
    at: f64,
    repo: usize,
    /// Per-build variation of the repository's duration.
    jitter: f64,
}

/// Weekdays 8:00 to 18:00.
fn working_hours(t: f64) -> bool {
    let hour = (t % DAY) / 3600.0;
    ((t / DAY) as u64) % 7 < 5 && (8.0..18.0).contains(&hour)
}

/// Day 0 is a Monday, 00:00.
fn rate(t: f64) -> f64 {
    let day = (t / DAY) as u64;
    let hour = (t % DAY) / 3600.0;
    let weekday = day % 7 < 5;
    let share = match (weekday, hour) {
        (true, h) if (8.0..18.0).contains(&h) => 1.0,
        (true, h) if (6.0..8.0).contains(&h) || (18.0..22.0).contains(&h) => 0.3,
        (true, _) => 0.05,
        (false, h) if (9.0..19.0).contains(&h) => 0.1,
        (false, _) => 0.03,
    };
    PEAK_RATE * share
}

fn workload() -> (Vec<Repo>, Vec<Arrival>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    const SUBDIRS: [&str; 12] = [
        "services/api",
        "services/web",
        "app",
        "backend",
        "frontend",
        "docker",
        "build",
        "cmd/server",
        "deploy/image",
        "images/base",
        "worker",
        "tools",
    ];
    let repos: Vec<Repo> = (0..REPOS)
        .map(|i| {
            // Most Tekton builds use the default CONTEXT "."; some use a subdirectory.
            let context = if rng.unit() < 0.75 {
                "/workspace/source/.".to_string()
            } else {
                format!("/workspace/source/{}", SUBDIRS[rng.below(SUBDIRS.len())])
            };
            let repository = format!("registry.example.com/team-{}/service-{i}", i % 47);
            // Warm builds: median 4 minutes, lognormal, 30 s to 40 min.
            let warm = (240.0 * (0.6 * rng.normal()).exp()).clamp(30.0, 2400.0);
            Repo {
                key: choose::affinity_key(&repository, &context),
                context,
                warm,
            }
        })
        .collect();
    let weights: Vec<f64> = (1..=REPOS).map(|rank| (rank as f64).powf(-ZIPF_S)).collect();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |sum, w| {
            *sum += w;
            Some(*sum)
        })
        .collect();
    let total = *cumulative.last().unwrap();
    let mut arrivals = Vec::new();
    let mut t = 0.0;
    loop {
        t += rng.exponential(PEAK_RATE);
        if t >= MONTH {
            break;
        }
        if rng.unit() * PEAK_RATE > rate(t) {
            continue;
        }
        let target = rng.unit() * total;
        let repo = cumulative.partition_point(|c| *c < target).min(REPOS - 1);
        arrivals.push(Arrival {
            at: t,
            repo,
            jitter: (0.2 * rng.normal()).exp(),
        });
    }
    (repos, arrivals)
}

// ---------------------------------------------------------------------------
// The farm.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Strategy {
    Random,
    Sticky,
    Hash,
    Bounded(Policy2),
}

/// A bounded-load variant: c, and how many replicas one wave asks (0: all).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Policy2 {
    c_percent: u32,
    width: usize,
}

impl Policy2 {
    fn policy(&self, replicas: usize) -> Policy {
        let width = if self.width == 0 { replicas } else { self.width };
        Policy {
            load_factor: f64::from(self.c_percent) / 100.0,
            probe_width: width,
            max_probed: if self.width == 0 {
                replicas
            } else {
                choose::MAX_PROBED
            },
        }
    }
}

const KILN: Policy2 = Policy2 {
    c_percent: 125,
    width: choose::PROBE_WIDTH,
};

struct Replica {
    up: bool,
    exists: bool,
    /// Running builds: (build id, remaining work in warm-seconds-at-full-speed).
    active: Vec<(usize, f64)>,
    last: f64,
    version: u64,
    cache: VecDeque<usize>,
    busy: f64,
    uptime: f64,
    /// The same two, weekdays 8:00 to 18:00 only.
    busy_work: f64,
    uptime_work: f64,
}

impl Replica {
    fn new(exists: bool) -> Self {
        Self {
            up: exists,
            exists,
            active: Vec::new(),
            last: 0.0,
            version: 0,
            cache: VecDeque::new(),
            busy: 0.0,
            uptime: 0.0,
            busy_work: 0.0,
            uptime_work: 0.0,
        }
    }

    fn speed(&self) -> f64 {
        (CORES / self.active.len().max(1) as f64).min(1.0)
    }

    fn advance(&mut self, now: f64) {
        let dt = now - self.last;
        if dt > 0.0 {
            let speed = self.speed();
            for (_, work) in &mut self.active {
                *work -= dt * speed;
            }
            let working = working_hours(self.last);
            self.busy += dt * self.active.len() as f64;
            if working {
                self.busy_work += dt * self.active.len() as f64;
            }
            if self.up {
                self.uptime += dt;
                if working {
                    self.uptime_work += dt;
                }
            }
        }
        self.last = now;
    }

    /// Touch `repo` in the LRU; true when it was there (a warm build).
    fn touch(&mut self, repo: usize) -> bool {
        let warm = match self.cache.iter().position(|r| *r == repo) {
            Some(at) => {
                self.cache.remove(at);
                true
            }
            None => false,
        };
        self.cache.push_front(repo);
        self.cache.truncate(CACHE);
        warm
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Event {
    /// Index into the arrivals.
    Arrive(usize),
    Done {
        replica: usize,
        version: u64,
    },
    /// A build's Tekton timeout.
    Timeout(usize),
    /// Look at every replica's load (every minute).
    Sample,
    Rescale,
    Down,
    Up,
}

struct Build {
    repo: usize,
    submitted: f64,
    work_warm: f64,
    replica: usize,
}

#[derive(Default)]
struct Report {
    builds: usize,
    warm: usize,
    times: Vec<f64>,
    peak_to_mean: f64,
    moved: f64,
    asked: usize,
    reruns: usize,
    timed_out: usize,
    peak_to_mean_work: f64,
}

fn simulate(repos: &[Repo], arrivals: &[Arrival], strategy: Strategy) -> Report {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut replicas: Vec<Replica> = (0..GROWN).map(|i| Replica::new(i < REPLICAS)).collect();
    let mut count = REPLICAS;
    let mut heap: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<_>, at: f64, event: Event| {
        seq += 1;
        heap.push(Reverse((at.to_bits(), seq, event)));
    };
    for (index, arrival) in arrivals.iter().enumerate() {
        push(&mut heap, arrival.at, Event::Arrive(index));
    }
    push(&mut heap, RESCALE_AT, Event::Rescale);
    push(&mut heap, DOWN_AT, Event::Down);
    push(&mut heap, UP_AT, Event::Up);
    let mut minute = 60.0;
    while minute < MONTH {
        push(&mut heap, minute, Event::Sample);
        minute += 60.0;
    }
    let mut builds: Vec<Build> = Vec::new();
    let mut report = Report::default();
    let mut last_before: Vec<Option<usize>> = vec![None; repos.len()];
    let mut first_after: Vec<Option<usize>> = vec![None; repos.len()];
    let names: Vec<String> = (0..GROWN).map(|i| format!("buildkitd-{i}")).collect();
    let mut pending: Vec<usize> = Vec::new();
    let mut now = 0.0;
    while let Some(Reverse((bits, _, event))) = heap.pop() {
        now = f64::from_bits(bits);
        match event {
            Event::Arrive(index) => {
                let arrival = &arrivals[index];
                let repo = &repos[arrival.repo];
                builds.push(Build {
                    repo: arrival.repo,
                    submitted: arrival.at,
                    work_warm: repo.warm * arrival.jitter,
                    replica: usize::MAX,
                });
                pending.push(builds.len() - 1);
                push(&mut heap, arrival.at + TIMEOUT, Event::Timeout(builds.len() - 1));
            }
            Event::Done { replica, version } => {
                let r = &mut replicas[replica];
                if r.version != version {
                    continue;
                }
                r.advance(now);
                let finished: Vec<usize> = r
                    .active
                    .iter()
                    .filter(|(_, work)| *work <= 1e-6)
                    .map(|(id, _)| *id)
                    .collect();
                r.active.retain(|(_, work)| *work > 1e-6);
                for id in finished {
                    report.times.push(now - builds[id].submitted);
                }
                schedule(&mut replicas[replica], replica, now, &mut heap, &mut push);
            }
            Event::Timeout(id) => {
                let replica = builds[id].replica;
                let r = &mut replicas[replica];
                if let Some(at) = r.active.iter().position(|(b, _)| *b == id) {
                    r.advance(now);
                    r.active.remove(at);
                    report.timed_out += 1;
                    report.times.push(TIMEOUT);
                    schedule(&mut replicas[replica], replica, now, &mut heap, &mut push);
                }
            }
            Event::Sample => {
                // Keeps the working-hours split of each replica's load exact to a minute.
                for r in &mut replicas {
                    r.advance(now);
                }
            }
            Event::Rescale => {
                for r in &mut replicas[REPLICAS..GROWN] {
                    r.advance(now);
                    r.exists = true;
                    r.up = true;
                }
                count = GROWN;
            }
            Event::Down => {
                let r = &mut replicas[DOWN_REPLICA];
                r.advance(now);
                r.up = false;
                r.cache.clear();
                r.version += 1;
                // Its builds lost their daemon: rerun on the next one (issue 9).
                for (id, _) in std::mem::take(&mut r.active) {
                    report.reruns += 1;
                    pending.push(id);
                }
            }
            Event::Up => {
                let r = &mut replicas[DOWN_REPLICA];
                r.advance(now);
                r.up = true;
            }
        }
        for id in std::mem::take(&mut pending) {
            let repo = builds[id].repo;
            let up: Vec<usize> = (0..count).filter(|i| replicas[*i].up).collect();
            let chosen = match strategy {
                Strategy::Random => up[rng.below(up.len())],
                Strategy::Sticky => {
                    let running: Vec<String> = up.iter().map(|i| names[*i].clone()).collect();
                    up[choose::order(&running, &repos[repo].context)[0]]
                }
                Strategy::Hash => {
                    let order = choose::replica_order("buildkitd", count as u32, &repos[repo].key);
                    order
                        .into_iter()
                        .map(|i| i as usize)
                        .find(|i| replicas[*i].up)
                        .unwrap()
                }
                Strategy::Bounded(variant) => {
                    let order: Vec<usize> =
                        choose::replica_order("buildkitd", count as u32, &repos[repo].key)
                            .into_iter()
                            .map(|i| i as usize)
                            .collect();
                    let choice = choose::walk(&variant.policy(count), count, |range| {
                        report.asked += range.len();
                        range
                            .map(|position| {
                                let r = &replicas[order[position]];
                                if r.up {
                                    Probe::Active(r.active.len() as u32)
                                } else {
                                    Probe::NoAnswer("down".into())
                                }
                            })
                            .collect()
                    });
                    // The handshake then skips a down daemon, as `kiln build` does.
                    choice
                        .order
                        .iter()
                        .map(|position| order[*position])
                        .find(|i| replicas[*i].up)
                        .unwrap()
                }
            };
            let r = &mut replicas[chosen];
            r.advance(now);
            let warm = r.touch(repo);
            report.builds += 1;
            report.warm += usize::from(warm);
            let work = builds[id].work_warm * if warm { 1.0 } else { COLD_FACTOR };
            r.active.push((id, work));
            builds[id].replica = chosen;
            if now < RESCALE_AT {
                last_before[repo] = Some(chosen);
            } else if first_after[repo].is_none() {
                first_after[repo] = Some(chosen);
            }
            schedule(&mut replicas[chosen], chosen, now, &mut heap, &mut push);
        }
    }
    for r in &mut replicas {
        r.advance(now.max(MONTH));
    }
    let peak_to_mean = |loads: Vec<f64>| {
        let mean = loads.iter().sum::<f64>() / loads.len() as f64;
        loads.iter().copied().fold(0.0, f64::max) / mean
    };
    report.peak_to_mean = peak_to_mean(
        replicas
            .iter()
            .filter(|r| r.uptime > 0.0)
            .map(|r| r.busy / r.uptime)
            .collect(),
    );
    report.peak_to_mean_work = peak_to_mean(
        replicas
            .iter()
            .filter(|r| r.uptime_work > 0.0)
            .map(|r| r.busy_work / r.uptime_work)
            .collect(),
    );
    let (mut both, mut moved) = (0usize, 0usize);
    for (before, after) in last_before.iter().zip(&first_after) {
        if let (Some(before), Some(after)) = (before, after) {
            both += 1;
            moved += usize::from(before != after);
        }
    }
    report.moved = moved as f64 / both.max(1) as f64;
    report
}

type Push<'a> = dyn FnMut(&mut BinaryHeap<Reverse<(u64, u64, Event)>>, f64, Event) + 'a;

fn schedule(
    r: &mut Replica,
    index: usize,
    now: f64,
    heap: &mut BinaryHeap<Reverse<(u64, u64, Event)>>,
    push: &mut Push<'_>,
) {
    r.version += 1;
    if let Some(least) = r.active.iter().map(|(_, work)| *work).reduce(f64::min) {
        let at = now + least.max(0.0) / r.speed();
        push(
            heap,
            at,
            Event::Done {
                replica: index,
                version: r.version,
            },
        );
    }
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

struct Row {
    name: String,
    warm: f64,
    p50: f64,
    p95: f64,
    peak: f64,
    moved: f64,
    asked: f64,
    timed_out: f64,
    busy_peak: f64,
}

fn row(name: &str, mut report: Report) -> Row {
    Row {
        name: name.to_string(),
        warm: 100.0 * report.warm as f64 / report.builds as f64,
        p50: percentile(&mut report.times, 0.5) / 60.0,
        p95: percentile(&mut report.times, 0.95) / 60.0,
        peak: report.peak_to_mean,
        moved: 100.0 * report.moved,
        asked: report.asked as f64 / report.builds as f64,
        timed_out: 100.0 * report.timed_out as f64 / report.times.len().max(1) as f64,
        busy_peak: report.peak_to_mean_work,
    }
}

fn print_rows(rows: &[Row]) {
    println!(
        "  {:<34} {:>9} {:>8} {:>8} {:>11} {:>11} {:>9} {:>10} {:>6}",
        "strategy",
        "warm hits",
        "p50 min",
        "p95 min",
        "peak/mean",
        "peak/mean",
        "moved by",
        "timed out",
        "asked"
    );
    println!(
        "  {:<34} {:>9} {:>8} {:>8} {:>11} {:>11} {:>9} {:>10} {:>6}",
        "", "", "", "", "8–18 h", "month", "8→10", "", ""
    );
    for r in rows {
        println!(
            "  {:<34} {:>8.1}% {:>8.2} {:>8.2} {:>11.2} {:>11.2} {:>8.1}% {:>9.2}% {:>6.2}",
            r.name, r.warm, r.p50, r.p95, r.busy_peak, r.peak, r.moved, r.timed_out, r.asked
        );
    }
}

fn month() {
    let (repos, arrivals) = workload();
    let top: f64 = {
        let mut counts = vec![0usize; REPOS];
        for a in &arrivals {
            counts[a.repo] += 1;
        }
        *counts.iter().max().unwrap() as f64 / arrivals.len() as f64
    };
    println!(
        "a month in a farm: {} builds of {REPOS} repositories (Zipf s = {ZIPF_S}; the busiest makes {:.1}% of them), \
         {REPLICAS} replicas of {CORES} build slots and an LRU cache of {CACHE} repositories each, cold = {COLD_FACTOR}x warm; \
         day 9 grows to {GROWN}, day 17 buildkitd-{DOWN_REPLICA} is down for a day",
        arrivals.len(),
        100.0 * top
    );
    let rows = vec![
        row(
            "random (a plain Service)",
            simulate(&repos, &arrivals, Strategy::Random),
        ),
        row(
            "sticky (buildx: context path)",
            simulate(&repos, &arrivals, Strategy::Sticky),
        ),
        row(
            "kiln, hashing (--load-factor 0)",
            simulate(&repos, &arrivals, Strategy::Hash),
        ),
        row(
            "kiln, bounded load (c = 1.25)",
            simulate(&repos, &arrivals, Strategy::Bounded(KILN)),
        ),
    ];
    print_rows(&rows);
    let (hash, bounded) = (&rows[2], &rows[3]);
    let checks = [
        (
            format!(
                "warm hits within 3 points of hashing ({:+.2})",
                bounded.warm - hash.warm
            ),
            hash.warm - bounded.warm <= 3.0,
        ),
        (
            format!("peak-to-mean ≤ 1.3 in working hours ({:.2})", bounded.busy_peak),
            bounded.busy_peak <= 1.3,
        ),
        (
            format!("peak-to-mean ≤ 1.3 over the month ({:.2})", bounded.peak),
            bounded.peak <= 1.3,
        ),
        (
            format!(
                "p95 at least 25% below hashing ({:+.1}%)",
                100.0 * (bounded.p95 / hash.p95 - 1.0)
            ),
            bounded.p95 <= 0.75 * hash.p95,
        ),
    ];
    for (what, ok) in checks {
        println!("  target: {what}: {}", if ok { "PASS" } else { "FAIL" });
    }
    println!();
    println!("bounded-load variants on the same month (c, and replicas asked per wave):");
    let mut variants = Vec::new();
    for (c_percent, width) in [
        (125, 0),
        (125, 2),
        (125, 3),
        (125, 4),
        (110, 3),
        (150, 3),
        (200, 3),
    ] {
        let label = if width == 0 {
            format!("c = {:.2}, every replica asked", f64::from(c_percent) / 100.0)
        } else {
            format!("c = {:.2}, {width} asked at once", f64::from(c_percent) / 100.0)
        };
        variants.push(row(
            &label,
            simulate(&repos, &arrivals, Strategy::Bounded(Policy2 { c_percent, width })),
        ));
    }
    print_rows(&variants);
}

// ---------------------------------------------------------------------------
// The hash function: the 512-point SHA-256 ring kiln used before, reproduced.

struct Ring {
    points: Vec<(u64, usize)>,
    nodes: usize,
}

fn sha64(text: &str) -> u64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    u64::from_be_bytes(digest.as_ref()[..8].try_into().unwrap())
}

impl Ring {
    fn new(prefix: &str, replicas: usize) -> Self {
        let mut points: Vec<(u64, usize)> = (0..replicas)
            .flat_map(|i| (0..512).map(move |v| (sha64(&format!("{prefix}-{i}#{v}")), i)))
            .collect();
        points.sort_unstable();
        Self {
            points,
            nodes: replicas,
        }
    }

    fn order(&self, key: &str) -> Vec<usize> {
        let start = self.points.partition_point(|(p, _)| *p < sha64(key));
        let mut seen = vec![false; self.nodes];
        let mut order = Vec::with_capacity(self.nodes);
        for offset in 0..self.points.len() {
            let (_, node) = self.points[(start + offset) % self.points.len()];
            if !std::mem::replace(&mut seen[node], true) {
                order.push(node);
                if order.len() == self.nodes {
                    break;
                }
            }
        }
        order
    }
}

fn hash_function() {
    let keys: Vec<String> = (0..100_000)
        .map(|i| {
            choose::affinity_key(
                &format!("registry.example.com/team-{}/service-{i}", i % 47),
                "/workspace/source/.",
            )
        })
        .collect();
    println!("hash function: 100,000 keys");
    println!(
        "  {:<28} {:>22} {:>22} {:>24}",
        "", "spread over 8 (max/mean)", "moved by 8→10 (ideal 20%)", "moved between old ones"
    );
    let ring8 = Ring::new("buildkitd", 8);
    let ring10 = Ring::new("buildkitd", 10);
    for (name, owner8, owner10) in [
        (
            "512-point SHA-256 ring",
            keys.iter().map(|k| ring8.order(k)[0]).collect::<Vec<_>>(),
            keys.iter().map(|k| ring10.order(k)[0]).collect::<Vec<_>>(),
        ),
        (
            "rendezvous (kiln)",
            keys.iter()
                .map(|k| choose::replica_order("buildkitd", 8, k)[0] as usize)
                .collect(),
            keys.iter()
                .map(|k| choose::replica_order("buildkitd", 10, k)[0] as usize)
                .collect(),
        ),
    ] {
        let mut counts = [0usize; 8];
        for o in &owner8 {
            counts[*o] += 1;
        }
        let spread = *counts.iter().max().unwrap() as f64 / (keys.len() as f64 / 8.0);
        let moved = owner8.iter().zip(&owner10).filter(|(a, b)| a != b).count();
        let between = owner8
            .iter()
            .zip(&owner10)
            .filter(|(a, b)| a != b && **b < 8)
            .count();
        println!(
            "  {name:<28} {spread:>22.3} {:>21.2}% {between:>24}",
            100.0 * moved as f64 / keys.len() as f64
        );
    }
    println!(
        "  one choice as a `kiln build` process makes it (build the structure, order one key), median of runs:"
    );
    println!(
        "  {:>10} {:>16} {:>16} {:>14} {:>16}",
        "replicas", "ring", "rendezvous", "ratio", "ring memory"
    );
    for replicas in [8usize, 64, 1024, kiln::build::MAX_REPLICAS as usize] {
        let runs = if replicas > 1000 { 5 } else { 50 };
        let time = |f: &dyn Fn()| {
            let mut samples: Vec<f64> = (0..runs)
                .map(|_| {
                    let start = Instant::now();
                    f();
                    start.elapsed().as_secs_f64() * 1000.0
                })
                .collect();
            percentile(&mut samples, 0.5)
        };
        let key = &keys[7];
        let ring = time(&|| {
            std::hint::black_box(Ring::new("buildkitd", replicas).order(key));
        });
        let rendezvous = time(&|| {
            std::hint::black_box(choose::replica_order("buildkitd", replicas as u32, key));
        });
        println!(
            "  {replicas:>10} {ring:>13.3} ms {rendezvous:>13.3} ms {:>13.0}x {:>13.1} MiB",
            ring / rendezvous,
            (replicas * 512 * 16) as f64 / (1 << 20) as f64
        );
    }
}

fn main() {
    let started = Instant::now();
    month();
    println!();
    hash_function();
    println!("\n(total {:.1} s)", started.elapsed().as_secs_f64());
}
