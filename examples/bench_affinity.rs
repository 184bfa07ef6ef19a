//! Benchmark for the daemon choice (run by scripts/bench-affinity). Not a timed test.
//!
//! 1. **A month in a farm**, a discrete-event simulation. 2,000 repositories build with
//!    Zipf popularity (s = 1.1) on a weekday/night/weekend arrival profile; each has its own
//!    warm build duration, and a cold build (no cache for the repository on that replica)
//!    takes 3× as long. 8 replicas, each an LRU cache of a fixed number of repositories and
//!    a processor shared by its builds (a build runs at full speed while the replica runs at
//!    most [`Farm::slots`] builds, slower beyond). On day 9 the farm grows to 10 replicas; on
//!    day 17 one replica is down for a day (its builds are rerun elsewhere, it comes back with
//!    an empty cache). Every strategy sees the same arrivals, side by side:
//!    - `random`: a plain Service;
//!    - `sticky`: buildx's sticky mode, hashing the context path alone over the running pods;
//!    - `hash`: kiln's rendezvous hashing of `<repository>:<context>` (`--load-factor 0`);
//!    - `kiln`: kiln's default, the same order with bounded load and busy repositories
//!      spread, and variants of its [`Policy`] (the bound alone, as kiln had it before;
//!      the key's first 3 asked, as two changes back).
//!
//!    kiln's strategies call `kiln::build::choose` itself, the code `kiln build` runs: the
//!    simulation answers the walk's load questions from its own replicas, as daemons do
//!    (each its active builds and its newest finished ones, by repository).
//! 2. **Other rules** on the same month, to map what the bound can buy: kiln's walk with
//!    other spread steps and load factors, the bound alone, and [`Rule`]s that are
//!    not kiln's: the paper's counting, two choices, key-blind rules that pass over the
//!    farm's busiest replica, and rules that know more than a daemon's active count (which
//!    replica holds a repository's cache, which repositories are the most built, which
//!    repositories each daemon is building). They exist here only to compare.
//! 3. **Sensitivity**: the same comparison with other cache sizes, build slots and rates.
//! 4. **The hash function**: rendezvous hashing (kiln's) against the 512-point SHA-256
//!    ring kiln used before (reproduced here): spread, keys moved by a rescale, and the cost
//!    of one choice (a `kiln build` process computes it once) up to the replica cap.
//! 5. **The load query's latency**: kiln's walk asking 1, 3, 8, 10 or 32 stand-in daemons
//!    at once over mTLS (tests/support/daemon.rs), as `kiln build` does before a build, each
//!    answering its history; and 8 without history, for what reading it costs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use kiln::build::choose::{self, Load, Policy, Probe};
use kiln::build::history::FINISHED_LIMIT;
use kiln::build::{Daemon, preflight, run};

#[path = "../tests/support/daemon.rs"]
mod daemon;

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
// The workload and the farm's fixed parts (issue 13 fixes these).

const REPOS: usize = 2_000;
const ZIPF_S: f64 = 1.1;
const REPLICAS: usize = 8;
const GROWN: usize = 10;
const COLD_FACTOR: f64 = 3.0;
const DAY: f64 = 86_400.0;
const MONTH: f64 = 30.0 * DAY;
const RESCALE_AT: f64 = 9.0 * DAY;
const DOWN_REPLICA: usize = 3;
const DOWN_AT: f64 = 17.0 * DAY + 9.0 * 3600.0;
const UP_AT: f64 = DOWN_AT + DAY;
/// The Tekton build timeout: a build still running after it is cancelled.
const TIMEOUT: f64 = 3600.0;

/// The parts issue 13 leaves open (docs/build.md says why these values).
#[derive(Clone, Copy, Debug)]
struct Farm {
    /// Repositories whose cache one replica keeps (LRU): 150 GiB of usable cache (GC's
    /// `maxUsedSpace`, 3/4 of a 200Gi PVC) at 1 GiB per repository.
    cache: usize,
    /// Builds a replica runs at full speed; beyond, they share it.
    slots: f64,
    /// Builds per minute in weekday working hours.
    peak_per_minute: f64,
}

const BASE: Farm = Farm {
    cache: 150,
    slots: 4.0,
    peak_per_minute: 3.6,
};

impl Farm {
    fn describe(&self) -> String {
        format!(
            "cache {} repositories, {} build slots, {} builds/min at peak",
            self.cache, self.slots, self.peak_per_minute
        )
    }
}

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

/// The share of the peak rate at `t`; day 0 is a Monday, 00:00.
fn share(t: f64) -> f64 {
    let day = (t / DAY) as u64;
    let hour = (t % DAY) / 3600.0;
    let weekday = day % 7 < 5;
    match (weekday, hour) {
        (true, h) if (8.0..18.0).contains(&h) => 1.0,
        (true, h) if (6.0..8.0).contains(&h) || (18.0..22.0).contains(&h) => 0.3,
        (true, _) => 0.05,
        (false, h) if (9.0..19.0).contains(&h) => 0.1,
        (false, _) => 0.03,
    }
}

fn workload(farm: &Farm) -> (Vec<Repo>, Vec<Arrival>) {
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
    // Repository i is the (i+1)-th most popular.
    let weights: Vec<f64> = (1..=REPOS).map(|rank| (rank as f64).powf(-ZIPF_S)).collect();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |sum, w| {
            *sum += w;
            Some(*sum)
        })
        .collect();
    let total = *cumulative.last().unwrap();
    let peak = farm.peak_per_minute / 60.0;
    let mut arrivals = Vec::new();
    let mut t = 0.0;
    loop {
        t += rng.exponential(peak);
        if t >= MONTH {
            break;
        }
        if rng.unit() > share(t) {
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
// Strategies.

#[derive(Clone, Copy, Debug)]
enum Strategy {
    Random,
    Sticky,
    Hash,
    /// kiln's walk (`kiln::build::choose::walk`) with this policy.
    Kiln(Policy),
    /// A rule that is not kiln's, for comparison.
    Other(Rule),
}

/// Rules that are not kiln's. Each asks every replica (the farm's true total), holds
/// replicas to the same bound `ceil(1.25 × (total + 1) / N)` kiln uses, and differs in
/// which replica it takes. The oracles know what no daemon reports; they show what that
/// knowledge would be worth.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    /// The paper's counting: a replica takes the build while `active + 1 ≤ bound` (the
    /// build being placed counted), else the first within the bound.
    Counting,
    /// Two choices: the less loaded of the key's first two replicas when both are within
    /// the bound (the first on a tie), else the first within it.
    TwoChoices,
    /// Oracle: the first replica within the bound that holds the repository's cache, else
    /// the first within it.
    CacheAware,
    /// Oracle: the `n` most built repositories use the paper's counting (they are warm
    /// wherever they go), the others the issue's.
    Popular(usize),
    /// Oracle: `Popular(n)`, and every build prefers a replica that holds its cache.
    PopularCacheAware(usize),
    /// What-if: each daemon reports which repositories its active builds are for. A
    /// repository with a build running is hot: it takes the first replica with room
    /// (`active + 1 ≤ bound`) among those running it, else the first with room; the others
    /// take the first within the bound.
    Running,
    /// Key-blind: the first within the bound, but a replica at the bound (no room for this
    /// build) that is also the farm's busiest (strictly, when `true`) is passed over for
    /// the first with room.
    BusiestYields(bool),
}

/// What a [`Rule`] sees of one build: for each replica in the key's order, its active
/// builds (None: down), whether it holds the repository's cache, and how many of its
/// active builds are for this repository; and the repository's popularity rank.
struct View {
    loads: Vec<Option<u32>>,
    cached: Vec<bool>,
    running: Vec<u32>,
    rank: usize,
}

impl Rule {
    /// The chosen position in the key's order.
    fn choose(self, view: &View) -> usize {
        let n = view.loads.len();
        let answered: Vec<u32> = view.loads.iter().flatten().copied().collect();
        let sum: f64 = answered.iter().map(|l| f64::from(*l)).sum();
        let total = sum * n as f64 / answered.len().max(1) as f64;
        let bound = choose::bound(choose::DEFAULT_LOAD_FACTOR, total, n);
        let within = |p: usize| view.loads[p].is_some_and(|l| l <= bound);
        let room = |p: usize| view.loads[p].is_some_and(|l| l < bound);
        let first = (0..n).find(|p| within(*p)).unwrap_or(0);
        let first_room = || (0..n).find(|p| room(*p));
        match self {
            Rule::Counting => first_room().unwrap_or(first),
            Rule::TwoChoices => (0..n.min(2))
                .filter(|p| within(*p))
                .min_by_key(|p| (view.loads[*p], *p))
                .unwrap_or(first),
            Rule::CacheAware => (0..n).find(|p| within(*p) && view.cached[*p]).unwrap_or(first),
            Rule::Popular(top) if view.rank < top => first_room().unwrap_or(first),
            Rule::Popular(_) => first,
            Rule::PopularCacheAware(top) if view.rank < top => (0..n)
                .find(|p| room(*p) && view.cached[*p])
                .or_else(first_room)
                .unwrap_or(first),
            Rule::PopularCacheAware(_) => (0..n).find(|p| within(*p) && view.cached[*p]).unwrap_or(first),
            Rule::Running if view.running.iter().any(|r| *r > 0) => (0..n)
                .find(|p| room(*p) && view.running[*p] > 0)
                .or_else(first_room)
                .unwrap_or(first),
            Rule::Running => first,
            Rule::BusiestYields(strict) => {
                let busiest = view.loads.iter().flatten().copied().max().unwrap_or(0);
                let others_below = |p: usize| {
                    (0..n)
                        .filter(|q| *q != p)
                        .all(|q| view.loads[q].is_none_or(|l| l < busiest))
                };
                let yields =
                    |p: usize| view.loads[p] == Some(busiest) && !room(p) && (!strict || others_below(p));
                (0..n).find(|p| within(*p) && !yields(*p)).unwrap_or(first)
            }
        }
    }
}

/// kiln's default: `Policy::with_load_factor(1.25)`, every replica asked, busy
/// repositories spread.
fn kiln_default() -> Strategy {
    Strategy::Kiln(Policy::with_load_factor(choose::DEFAULT_LOAD_FACTOR))
}

/// kiln's walk with load factor `c` and the spread at `step` (0: off, the bound alone).
fn kiln_spread(load_factor: f64, spread_step: f64) -> Strategy {
    Strategy::Kiln(Policy {
        spread_step,
        ..Policy::with_load_factor(load_factor)
    })
}

/// kiln two changes back: the key's first three asked, the total estimated from them, no
/// spread.
fn kiln_three_asked(load_factor: f64) -> Strategy {
    Strategy::Kiln(Policy {
        load_factor,
        probe_width: 3,
        max_probed: 12,
        spread_step: 0.0,
    })
}

// ---------------------------------------------------------------------------
// The farm.

struct Replica {
    up: bool,
    /// Running builds: (build id, remaining work in warm-seconds-at-full-speed).
    active: Vec<(usize, f64)>,
    last: f64,
    version: u64,
    cache: VecDeque<usize>,
    capacity: usize,
    /// The repositories of its newest finished builds, newest first: what its build history
    /// answers kiln (at most `FINISHED_LIMIT`).
    finished: VecDeque<usize>,
    slots: f64,
    busy: f64,
    uptime: f64,
    /// The same two, weekdays 8:00 to 18:00 only.
    busy_work: f64,
    uptime_work: f64,
}

impl Replica {
    fn new(up: bool, farm: &Farm) -> Self {
        Self {
            up,
            active: Vec::new(),
            last: 0.0,
            version: 0,
            cache: VecDeque::new(),
            capacity: farm.cache,
            finished: VecDeque::new(),
            slots: farm.slots,
            busy: 0.0,
            uptime: 0.0,
            busy_work: 0.0,
            uptime_work: 0.0,
        }
    }

    fn speed(&self) -> f64 {
        (self.slots / self.active.len().max(1) as f64).min(1.0)
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

    /// Record a finished (or cancelled) build of `repo` in its history.
    fn record(&mut self, repo: usize) {
        self.finished.push_front(repo);
        self.finished.truncate(FINISHED_LIMIT as usize);
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
        self.cache.truncate(self.capacity);
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
    /// Walks that estimated the total: choices where the key's home was over the bound
    /// the true total gives, and of those, the ones where the estimate kept it eligible.
    home_over_true_bound: usize,
    home_kept_by_estimate: usize,
    /// Per-minute samples in working hours: their count, the farm's active builds summed,
    /// and the bound over the mean replica's load (`B·N/T`, samples with T > 0) summed.
    work_samples: usize,
    work_total: f64,
    work_per_replica: f64,
    work_bound_over_mean: f64,
    work_busy_samples: usize,
}

type Heap = BinaryHeap<Reverse<(u64, u64, Event)>>;

struct Queue {
    heap: Heap,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: f64, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse((at.to_bits(), self.seq, event)));
    }

    /// The next completion on `r` (its earlier one is stale once `version` moves).
    fn schedule(&mut self, r: &mut Replica, index: usize, now: f64) {
        r.version += 1;
        if let Some(least) = r.active.iter().map(|(_, work)| *work).reduce(f64::min) {
            let at = now + least.max(0.0) / r.speed();
            self.push(
                at,
                Event::Done {
                    replica: index,
                    version: r.version,
                },
            );
        }
    }
}

fn simulate(repos: &[Repo], arrivals: &[Arrival], strategy: Strategy, farm: &Farm) -> Report {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut replicas: Vec<Replica> = (0..GROWN).map(|i| Replica::new(i < REPLICAS, farm)).collect();
    let mut count = REPLICAS;
    let mut queue = Queue {
        heap: BinaryHeap::new(),
        seq: 0,
    };
    for (index, arrival) in arrivals.iter().enumerate() {
        queue.push(arrival.at, Event::Arrive(index));
    }
    queue.push(RESCALE_AT, Event::Rescale);
    queue.push(DOWN_AT, Event::Down);
    queue.push(UP_AT, Event::Up);
    let mut minute = 60.0;
    while minute < MONTH {
        queue.push(minute, Event::Sample);
        minute += 60.0;
    }
    let mut builds: Vec<Build> = Vec::new();
    let mut report = Report::default();
    let mut last_before: Vec<Option<usize>> = vec![None; repos.len()];
    let mut first_after: Vec<Option<usize>> = vec![None; repos.len()];
    let names: Vec<String> = (0..GROWN).map(|i| format!("buildkitd-{i}")).collect();
    let mut pending: Vec<usize> = Vec::new();
    let mut now = 0.0;
    while let Some(Reverse((bits, _, event))) = queue.heap.pop() {
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
                queue.push(arrival.at + TIMEOUT, Event::Timeout(builds.len() - 1));
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
                    replicas[replica].record(builds[id].repo);
                }
                queue.schedule(&mut replicas[replica], replica, now);
            }
            Event::Timeout(id) => {
                let replica = builds[id].replica;
                let r = &mut replicas[replica];
                if let Some(at) = r.active.iter().position(|(b, _)| *b == id) {
                    r.advance(now);
                    r.active.remove(at);
                    report.timed_out += 1;
                    report.times.push(TIMEOUT);
                    r.record(builds[id].repo);
                    queue.schedule(&mut replicas[replica], replica, now);
                }
            }
            Event::Sample => {
                // Keeps the working-hours split of each replica's load exact to a minute.
                for r in &mut replicas {
                    r.advance(now);
                }
                if working_hours(now) {
                    let up: Vec<&Replica> = replicas[..count].iter().filter(|r| r.up).collect();
                    let total: usize = up.iter().map(|r| r.active.len()).sum();
                    report.work_samples += 1;
                    report.work_total += total as f64;
                    report.work_per_replica += total as f64 / up.len().max(1) as f64;
                    if total > 0 {
                        let bound = choose::bound(choose::DEFAULT_LOAD_FACTOR, total as f64, up.len());
                        report.work_busy_samples += 1;
                        report.work_bound_over_mean += f64::from(bound) * up.len() as f64 / total as f64;
                    }
                }
            }
            Event::Rescale => {
                for r in &mut replicas[REPLICAS..GROWN] {
                    r.advance(now);
                    r.up = true;
                }
                count = GROWN;
            }
            Event::Down => {
                let r = &mut replicas[DOWN_REPLICA];
                r.advance(now);
                r.up = false;
                r.cache.clear();
                r.finished.clear();
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
            let key_order = || -> Vec<usize> {
                choose::replica_order("buildkitd", count as u32, &repos[repo].key)
                    .into_iter()
                    .map(|i| i as usize)
                    .collect()
            };
            let chosen = match strategy {
                Strategy::Random => up[rng.below(up.len())],
                Strategy::Sticky => {
                    let running: Vec<String> = up.iter().map(|i| names[*i].clone()).collect();
                    up[choose::order(&running, &repos[repo].context)[0]]
                }
                Strategy::Hash => key_order().into_iter().find(|i| replicas[*i].up).unwrap(),
                Strategy::Kiln(policy) => {
                    let order = key_order();
                    let choice = choose::walk(&policy, count, |range| {
                        report.asked += range.len();
                        range
                            .map(|position| {
                                let r = &replicas[order[position]];
                                if r.up {
                                    let same = |of: &mut dyn Iterator<Item = usize>| {
                                        of.filter(|other| *other == repo).count() as u32
                                    };
                                    Probe::Active(Load {
                                        active: r.active.len() as u32,
                                        active_same: same(&mut r.active.iter().map(|(b, _)| builds[*b].repo)),
                                        finished: r.finished.len() as u32,
                                        finished_same: same(&mut r.finished.iter().copied()),
                                    })
                                } else {
                                    Probe::NoAnswer("down".into())
                                }
                            })
                            .collect()
                    });
                    if policy.probe_width < count {
                        let up_loads: Vec<u32> =
                            up.iter().map(|i| replicas[*i].active.len() as u32).collect();
                        let true_total =
                            f64::from(up_loads.iter().sum::<u32>()) * count as f64 / up.len() as f64;
                        let true_bound = choose::bound(policy.load_factor, true_total, count);
                        let home = &replicas[order[0]];
                        if home.up && home.active.len() as u32 > true_bound {
                            report.home_over_true_bound += 1;
                            report.home_kept_by_estimate += usize::from(choice.chosen() == 0);
                        }
                    }
                    // The handshake then skips a down daemon, as `kiln build` does.
                    choice
                        .order
                        .iter()
                        .map(|position| order[*position])
                        .find(|i| replicas[*i].up)
                        .unwrap()
                }
                Strategy::Other(rule) => {
                    let order = key_order();
                    report.asked += count;
                    let view = View {
                        loads: order
                            .iter()
                            .map(|i| replicas[*i].up.then(|| replicas[*i].active.len() as u32))
                            .collect(),
                        cached: order.iter().map(|i| replicas[*i].cache.contains(&repo)).collect(),
                        running: order
                            .iter()
                            .map(|i| {
                                replicas[*i]
                                    .active
                                    .iter()
                                    .filter(|(b, _)| builds[*b].repo == repo)
                                    .count() as u32
                            })
                            .collect(),
                        rank: repo,
                    };
                    let position = rule.choose(&view);
                    // As kiln's: a down replica is never chosen.
                    std::iter::once(order[position])
                        .chain(order.iter().copied())
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
            queue.schedule(&mut replicas[chosen], chosen, now);
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

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

// ---------------------------------------------------------------------------
// Reports.

struct Row {
    name: String,
    /// The farm's mean active builds in working hours, and the mean of `B·N/T` there.
    work_total: f64,
    work_per_replica: f64,
    bound_over_mean: f64,
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
        work_total: report.work_total / report.work_samples.max(1) as f64,
        work_per_replica: report.work_per_replica / report.work_samples.max(1) as f64,
        bound_over_mean: report.work_bound_over_mean / report.work_busy_samples.max(1) as f64,
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

/// Issue 13's three targets for `r`, against pure hashing on the same farm.
struct Targets {
    warm: bool,
    peak: bool,
    p95: bool,
}

impl Targets {
    fn of(r: &Row, hash: &Row) -> Self {
        Self {
            warm: hash.warm - r.warm <= 3.0,
            peak: r.busy_peak <= 1.3 && r.peak <= 1.3,
            p95: r.p95 <= 0.75 * hash.p95,
        }
    }

    fn text(&self) -> String {
        let met: Vec<&str> = [(self.warm, "warm"), (self.peak, "peak"), (self.p95, "p95")]
            .iter()
            .filter(|(ok, _)| *ok)
            .map(|(_, name)| *name)
            .collect();
        match met.len() {
            0 => "none".into(),
            3 => "all three".into(),
            _ => met.join(" + "),
        }
    }
}

fn print_rows(rows: &[Row], hash: Option<&Row>) {
    println!(
        "  {:<54} {:>9} {:>8} {:>8} {:>10} {:>10} {:>9} {:>10} {:>6}  {}",
        "strategy",
        "warm hits",
        "p50 min",
        "p95 min",
        "peak/mean",
        "peak/mean",
        "moved by",
        "timed out",
        "asked",
        if hash.is_some() { "targets met" } else { "" }
    );
    println!(
        "  {:<54} {:>9} {:>8} {:>8} {:>10} {:>10} {:>9} {:>10} {:>6}",
        "", "", "", "", "8–18 h", "month", "8→10", "", ""
    );
    for r in rows {
        let targets = hash.map(|h| Targets::of(r, h).text()).unwrap_or_default();
        println!(
            "  {:<54} {:>8.1}% {:>8.2} {:>8.2} {:>10.2} {:>10.2} {:>8.1}% {:>9.2}% {:>6.2}  {targets}",
            r.name, r.warm, r.p50, r.p95, r.busy_peak, r.peak, r.moved, r.timed_out, r.asked
        );
    }
}

fn month() {
    let (repos, arrivals) = workload(&BASE);
    let run = |name: &str, strategy: Strategy| row(name, simulate(&repos, &arrivals, strategy, &BASE));
    let busiest = {
        let mut counts = vec![0usize; REPOS];
        for a in &arrivals {
            counts[a.repo] += 1;
        }
        *counts.iter().max().unwrap() as f64 / arrivals.len() as f64
    };
    println!(
        "1. a month in a farm: {} builds of {REPOS} repositories (Zipf s = {ZIPF_S}; the busiest makes {:.1}% of them), \
         {REPLICAS} replicas of {} build slots and an LRU cache of {} repositories each, cold = {COLD_FACTOR}x warm; \
         day 9 grows to {GROWN}, day 17 buildkitd-{DOWN_REPLICA} is down for a day",
        arrivals.len(),
        100.0 * busiest,
        BASE.slots,
        BASE.cache,
    );
    let rows = vec![
        run("random (a plain Service)", Strategy::Random),
        run("sticky (buildx: context path)", Strategy::Sticky),
        run("kiln, hashing (--load-factor 0)", Strategy::Hash),
        run(
            "kiln, bounded load and spread (default, c = 1.25)",
            kiln_default(),
        ),
        run(
            "kiln before: the bound alone (c = 1.25, all asked)",
            kiln_spread(1.25, 0.0),
        ),
        run(
            "kiln two changes back (c = 1.25, first 3 asked)",
            kiln_three_asked(1.25),
        ),
    ];
    print_rows(&rows, None);
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
    println!(
        "  in working hours the farm runs {:.1} builds on average ({:.2} per replica); the bound \
         B = ceil(1.25 × (T + 1) / N) is then {:.2}× the mean replica's load on average, so with the bound alone \
         a home taken whenever it is within the bound (active ≤ B, then B + 1 with the new build) runs above 1.3× \
         the mean while its keys' builds keep coming; the spread takes the busy repositories' builds elsewhere first",
        bounded.work_total, bounded.work_per_replica, bounded.bound_over_mean,
    );

    println!();
    println!("2. rules on the same month (every row holds replicas to ceil(c × (total + 1) / N)):");
    let mut rules = vec![run("kiln, hashing (--load-factor 0)", Strategy::Hash)];
    rules.push(run("kiln default: c = 1.25, spread step 0.1", kiln_default()));
    for step in [0.05, 0.2, 0.5, 1.0] {
        rules.push(run(
            &format!("kiln: c = 1.25, spread step {step}"),
            kiln_spread(1.25, step),
        ));
    }
    for c in [1.1, 1.5, 2.0] {
        rules.push(run(
            &format!("kiln: c = {c:.2}, spread step 0.1"),
            kiln_spread(c, choose::SPREAD_STEP),
        ));
    }
    rules.push(run(
        "the bound alone: c = 1.25, every replica asked",
        kiln_spread(1.25, 0.0),
    ));
    for c in [1.0, 1.5] {
        rules.push(run(
            &format!("the bound alone: c = {c:.2}, every replica asked"),
            kiln_spread(c, 0.0),
        ));
    }
    let before = simulate(&repos, &arrivals, kiln_three_asked(1.25), &BASE);
    let bias = (
        before.home_over_true_bound as f64 / before.builds as f64,
        before.home_kept_by_estimate as f64 / before.home_over_true_bound.max(1) as f64,
    );
    rules.push(row("the bound alone: c = 1.25, the first 3 asked", before));
    for (name, rule) in [
        (
            "not kiln: the paper's counting (active + 1 ≤ bound)",
            Rule::Counting,
        ),
        (
            "not kiln: two choices (less loaded of the first two)",
            Rule::TwoChoices,
        ),
        ("oracle: prefers a replica holding the cache", Rule::CacheAware),
        (
            "oracle: the 10 most built counted as the paper does",
            Rule::Popular(10),
        ),
        ("oracle: both of the above", Rule::PopularCacheAware(10)),
        ("what-if: daemons report which repositories run", Rule::Running),
        (
            "key-blind: the busiest at its bound yields",
            Rule::BusiestYields(false),
        ),
        (
            "key-blind: the strictly busiest at its bound yields",
            Rule::BusiestYields(true),
        ),
    ] {
        rules.push(run(name, Strategy::Other(rule)));
    }
    print_rows(&rules, Some(&rules[0]));
    println!(
        "  the bound alone, the first 3 asked: the key's home was over the bound of the farm's true total in {:.1}% of choices; \
         the estimate from the first 3 kept it eligible in {:.1}% of those",
        100.0 * bias.0,
        100.0 * bias.1
    );
}

fn sensitivity() {
    println!("3. sensitivity: the same comparison on other farms (targets against hashing on that farm):");
    let farms = [
        ("cache 75 repositories (2 GiB each)", Farm { cache: 75, ..BASE }),
        (
            "cache 300 repositories (0.5 GiB each)",
            Farm { cache: 300, ..BASE },
        ),
        (
            "cache 600 repositories (0.25 GiB each)",
            Farm { cache: 600, ..BASE },
        ),
        ("3 build slots per replica", Farm { slots: 3.0, ..BASE }),
        ("8 build slots per replica", Farm { slots: 8.0, ..BASE }),
        (
            "twice the builds, 8 build slots",
            Farm {
                slots: 8.0,
                peak_per_minute: 2.0 * BASE.peak_per_minute,
                ..BASE
            },
        ),
    ];
    for (name, farm) in farms {
        let (repos, arrivals) = workload(&farm);
        println!("  {name} ({}; {} builds):", farm.describe(), arrivals.len());
        let run = |name: &str, strategy: Strategy| row(name, simulate(&repos, &arrivals, strategy, &farm));
        let rows = vec![
            run("kiln, hashing (--load-factor 0)", Strategy::Hash),
            run("kiln default: bounded load and spread", kiln_default()),
            run(
                "kiln before: the bound alone, every replica asked",
                kiln_spread(1.25, 0.0),
            ),
            run("the bound alone, the first 3 asked", kiln_three_asked(1.25)),
            run("not kiln: the paper's counting", Strategy::Other(Rule::Counting)),
            run("not kiln: two choices", Strategy::Other(Rule::TwoChoices)),
        ];
        print_rows(&rows, Some(&rows[0]));
    }
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
    println!("4. hash function: 100,000 keys");
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

// ---------------------------------------------------------------------------
// The load query's latency, as `kiln build` runs it.

type Error = Box<dyn std::error::Error>;

/// kiln's walk (`run::choose_by_load`, a fresh mTLS connection per daemon, on one thread as
/// `kiln build` runs it) over N stand-in daemons, each its own listener and thread, asking
/// 1, 3 or every one of them at once. Loopback: the client's and the daemons' TLS work
/// share this machine's cores, which a cluster spreads over nodes.
fn load_query_latency(runs: usize) -> Result<(), Error> {
    let pki = daemon::Pki::new();
    let dir = &pki.dir;
    let files = preflight::find_tls_files(dir.path())?;
    let material = preflight::read_material(&files)?;
    // A fresh client config per walk, as each `kiln build` process has: no TLS session
    // to resume from an earlier walk.
    let fresh_config = || preflight::client_config(dir.path(), &material).unwrap();
    // Each stand-in runs 1 build and has a full history, as a daemon of a busy farm: it
    // answers its 50 newest finished builds (of another repository, so nothing spreads and
    // every walk ends at the home). 8 more have no history, for what reading it costs.
    let most = 32;
    let serve = |finished: u32| {
        pki.serve(
            1,
            daemon::Behavior {
                finished,
                ..Default::default()
            },
        )
    };
    let stand_ins: Vec<daemon::Daemon> = (0..most).map(|_| serve(200)).collect();
    let fresh: Vec<daemon::Daemon> = (0..8).map(|_| serve(0)).collect();
    let to = |stand_ins: &[daemon::Daemon]| -> Vec<Daemon> {
        stand_ins
            .iter()
            .enumerate()
            .map(|(i, s)| Daemon {
                host: format!("buildkitd-{i}.buildkitd.ci.svc"),
                port: 1234,
                connect_to: Some(s.addr),
            })
            .collect()
    };
    let (candidates, without_history) = (to(&stand_ins), to(&fresh));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let all = Policy::with_load_factor(1.25);
    let cases: Vec<(String, &[Daemon], usize, Policy)> = vec![
        ("the home only (1 asked of 8)".into(), &candidates, 8, width(1)),
        (
            "the first 3 of 8 (kiln two changes back)".into(),
            &candidates,
            8,
            width(3),
        ),
        (
            "every one of 8, no history (kiln before)".into(),
            &without_history,
            8,
            all,
        ),
        ("every one of 8 (kiln now)".into(), &candidates, 8, all),
        ("every one of 10 (kiln now)".into(), &candidates, 10, all),
        ("every one of 32 (kiln now)".into(), &candidates, 32, all),
    ];
    let choose = |config, candidates: &[Daemon], n: usize, policy: &Policy| {
        let choice = runtime.block_on(run::choose_by_load(
            &candidates[..n],
            config,
            policy,
            Duration::from_secs(5),
            "registry.example.com/team/app",
        ));
        assert_eq!(
            choice.chosen(),
            0,
            "every stand-in runs 1 build: the home is within the bound"
        );
        choice.verdicts.len()
    };
    // Warm up, then interleave the cases so the machine's load falls on all alike.
    for (_, stand_ins, n, policy) in &cases {
        for _ in 0..5 {
            choose(fresh_config(), stand_ins, *n, policy);
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut asked = vec![0; cases.len()];
    for _ in 0..runs {
        for (i, (_, stand_ins, n, policy)) in cases.iter().enumerate() {
            let config = fresh_config();
            let start = Instant::now();
            asked[i] = choose(config, stand_ins, *n, policy);
            samples[i].push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    println!(
        "5. the load query as `kiln build` makes it: kiln's walk over stand-in daemons on loopback, \
         a fresh mTLS connection (no session resumed) to each, each answering 1 active and {FINISHED_LIMIT} finished builds \
         unless it has no history, {runs} runs each, interleaved (a finished record is {} bytes, an answer \
         with history {} KiB)",
        daemon::event(1, "done0", daemon::OTHER_IMAGE).len(),
        (51 * (daemon::event(1, "done0", daemon::OTHER_IMAGE).len() + 5)) / 1024,
    );
    for (i, (name, ..)) in cases.iter().enumerate() {
        let (p50, p90) = (percentile(&mut samples[i], 0.5), percentile(&mut samples[i], 0.9));
        println!(
            "  {name:<42} {:>3} asked   p50 {p50:7.2} ms   p90 {p90:7.2} ms",
            asked[i]
        );
    }
    Ok(())
}

fn width(probe_width: usize) -> Policy {
    Policy {
        load_factor: choose::DEFAULT_LOAD_FACTOR,
        probe_width,
        max_probed: 4 * probe_width,
        spread_step: choose::SPREAD_STEP,
    }
}

fn main() -> Result<(), Error> {
    let started = Instant::now();
    let runs = std::env::args()
        .nth(1)
        .map(|n| n.parse::<usize>())
        .transpose()?
        .unwrap_or(200);
    month();
    println!();
    sensitivity();
    println!();
    hash_function();
    println!();
    load_query_latency(runs)?;
    println!("\n(total {:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}
