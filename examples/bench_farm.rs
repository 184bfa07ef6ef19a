//! A year in the farm (run by scripts/bench-farm): how many builds the certificate
//! rotations interrupt, and how often a build finds a warm cache for its repository.
//!
//! One overlay (default `overlays/prod.yaml`) gives the farm: its replicas and service name
//! (routed by the rendezvous-hashing order `kiln build` uses, `kiln::build::choose::order`),
//! the Tekton timeout (the longest build, and the drain bound and grace period through
//! `kiln::render::drain`), its cache size
//! (how many repositories a replica keeps), and its certificate policy: the daemon leaf is
//! renewed at the first `rotation.schedule` run in its renew window, and each renewal
//! restarts every replica; one CA rollover adds three restarts `propagationDelay` apart.
//!
//! The same builds (seeded) run through three farms side by side:
//! - **old**: what kiln rendered before issue 9: emptyDir, 30 s grace, no preStop. A
//!   StatefulSet restarts one pod at a time; SIGTERM aborts its builds and the cache goes.
//! - **new**: a persistent cache per replica and the drain hook: a terminating pod takes no
//!   new builds (after a short endpoint/DNS lag), waits for its builds, then restarts warm.
//! - **never restarted**: the reference for the warm-cache share.
//!
//! Builds come from repositories with Zipf popularity (a few popular, a long tail of rare
//! ones); durations are mostly minutes with a tail up to the Tekton timeout. A build is warm
//! when the replica that runs it built the same repository before and still holds it (each
//! replica keeps the most recently built repositories that fit its GC cap). When its owner
//! cannot take builds, `kiln build` falls over to the next daemon in its order, as it does in the cluster.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::path::PathBuf;

use kiln::build::choose::{affinity_key, order};
use kiln::overlay::Overlay;
use kiln::render::drain;

const DAY: i64 = 86_400;
const YEAR: i64 = 365 * DAY;

/// Seconds from SIGTERM to a stopped container, and from pod creation to Ready (image cached,
/// readiness probe after its 5 s initial delay; a PVC reattaches in the same window).
const STOP_SECS: i64 = 5;
const START_SECS: i64 = 25;
/// How long a terminating pod still gets new builds: endpoint removal and DNS TTL.
const ROUTING_LAG_SECS: i64 = 5;
/// The old policy's grace period (the Kubernetes default, no preStop).
const OLD_GRACE_SECS: i64 = 30;

struct Args {
    overlays: PathBuf,
    overlay: String,
    builds_per_day: f64,
    repos: usize,
    zipf: f64,
    gib_per_repo: f64,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        overlays: PathBuf::from("overlays"),
        overlay: "prod".into(),
        builds_per_day: 600.0,
        repos: 1500,
        zipf: 1.1,
        gib_per_repo: 2.0,
        seed: 9,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--overlays" => args.overlays = value()?.into(),
            "--overlay" => args.overlay = value()?,
            "--builds-per-day" => {
                args.builds_per_day = value()?.parse().map_err(|e| format!("{flag}: {e}"))?
            }
            "--repos" => args.repos = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--zipf" => args.zipf = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--gib-per-repo" => args.gib_per_repo = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--seed" => args.seed = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.builds_per_day <= 0.0 || args.repos == 0 || args.gib_per_repo <= 0.0 {
        return Err("--builds-per-day, --repos and --gib-per-repo must be above 0".into());
    }
    Ok(args)
}

/// SplitMix64: a small deterministic generator, so every run sees the same year.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }
}

#[derive(Clone)]
struct Build {
    arrival: i64,
    key: String,
    duration: i64,
}

/// The year's builds: Poisson arrivals, Zipf repositories, durations capped at the timeout.
fn builds(args: &Args, timeout: i64) -> Vec<Build> {
    let mut rng = Rng(args.seed);
    let weights: Vec<f64> = (1..=args.repos)
        .map(|k| 1.0 / (k as f64).powf(args.zipf))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    let keys: Vec<String> = (0..args.repos)
        .map(|i| {
            affinity_key(
                &format!("registry.example.com/team-{}/app-{i}", i % 41),
                "/workspace/source",
            )
        })
        .collect();
    let mean_gap = DAY as f64 / args.builds_per_day;
    let mut t = 0.0;
    let mut out = Vec::new();
    loop {
        t += rng.exponential(mean_gap);
        if t >= YEAR as f64 {
            return out;
        }
        let u = rng.unit();
        let repo = cdf.partition_point(|c| *c < u).min(keys.len() - 1);
        // Most builds take minutes; 3% are long ones, up to the Tekton timeout.
        let duration = if rng.unit() < 0.03 {
            (timeout as f64 * (0.3 + 0.7 * rng.unit())) as i64
        } else {
            (60.0 + rng.exponential(7.0 * 60.0)) as i64
        };
        out.push(Build {
            arrival: t as i64,
            key: keys[repo].clone(),
            duration: duration.clamp(30, timeout),
        });
    }
}

/// One cron field: `*`, `N`, `A-B`, `*/S`, `A-B/S` and lists of those.
fn cron_field(field: &str, value: u32) -> Option<bool> {
    let mut any = false;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().ok()?),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (0, u32::MAX)
        } else if let Some((a, b)) = range.split_once('-') {
            (a.parse().ok()?, b.parse().ok()?)
        } else {
            let n = range.parse().ok()?;
            (n, if step > 1 { u32::MAX } else { n })
        };
        any |= value >= lo && value <= hi && (value - lo.min(value)).is_multiple_of(step.max(1));
    }
    Some(any)
}

/// The CronJob runs of `schedule` (UTC) in the year, or daily at 03:17 when the schedule
/// uses names or macros this model does not read.
fn cron_runs(schedule: &str) -> (Vec<i64>, bool) {
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let mut runs = Vec::new();
    let mut understood = fields.len() == 5;
    if understood {
        for minute in (0..YEAR + 30 * DAY).step_by(60) {
            // Day 0 is a Thursday (1 January 1970 was one; the model's year starts on one).
            let (day, rest) = (minute / DAY, minute % DAY);
            let (hour, min) = ((rest / 3600) as u32, ((rest % 3600) / 60) as u32);
            let weekday = ((day + 4) % 7) as u32;
            let date = time::Date::from_julian_day(2_440_588 + day as i32).unwrap();
            let checks = [
                cron_field(fields[0], min),
                cron_field(fields[1], hour),
                cron_field(fields[2], u32::from(date.day())),
                cron_field(fields[3], u32::from(u8::from(date.month()))),
                cron_field(fields[4], weekday)
                    .map(|w| w || (weekday == 0 && cron_field(fields[4], 7) == Some(true))),
            ];
            match checks.iter().copied().collect::<Option<Vec<bool>>>() {
                Some(all) if all.iter().all(|b| *b) => runs.push(minute),
                Some(_) => {}
                None => {
                    understood = false;
                    break;
                }
            }
        }
    }
    if !understood {
        runs = (0..YEAR / DAY + 30)
            .map(|d| d * DAY + 3 * 3600 + 17 * 60)
            .collect();
    }
    (runs, understood)
}

/// When the rolling restarts begin: each daemon leaf renewal, and the three steps of one
/// CA rollover started at the first run after mid-year.
fn restarts(overlay: &Overlay, runs: &[i64]) -> Vec<(i64, &'static str)> {
    let validity = overlay.certs.validity.as_secs();
    let renew_before = overlay.certs.leaf_renew_before().as_secs();
    let next_run = |t: i64| runs.iter().copied().find(|r| *r >= t);
    let mut out = Vec::new();
    let mut issued = 0;
    while let Some(run) = next_run(issued + validity - renew_before) {
        if run >= YEAR {
            break;
        }
        out.push((run, "leaf renewal"));
        issued = run;
    }
    let delay = overlay.rotation.propagation_delay.as_secs();
    if let Some(start) = next_run(YEAR / 2) {
        for (step, label) in [
            (0, "CA rollover 1/3"),
            (1, "CA rollover 2/3"),
            (2, "CA rollover 3/3"),
        ] {
            if let Some(run) = next_run(start + step * delay)
                && run < YEAR
            {
                out.push((run, label));
            }
        }
    }
    out.sort();
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    Old,
    New,
    Never,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PodState {
    Ready,
    /// Terminating since the given time: draining (new) or already stopped (old).
    Draining(i64),
    Down,
}

struct Pod {
    state: PodState,
    active: BTreeMap<usize, i64>,
    /// Repository keys, most recently built last.
    cache: VecDeque<String>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A restart of every replica begins (one pod at a time).
    Restart,
    /// Pod `i` starts terminating.
    Terminate(usize),
    /// The drain hook of pod `i` looks at its builds.
    Poll(usize),
    /// Pod `i` has stopped; it comes back START_SECS later.
    Stopped(usize),
    /// Pod `i` is Ready again; the restart moves to the next pod.
    Ready(usize),
    /// A build arrives (or retries after finding no replica).
    Arrive(usize),
    /// A build ends.
    Complete(usize, usize),
}

#[derive(Default)]
struct Outcome {
    started: usize,
    warm: usize,
    interrupted: usize,
    /// Builds whose first-choice daemon could not take them, run by the next replica.
    fallovers: usize,
    /// Builds that found no replica at all and started once one was Ready.
    waited: usize,
}

fn simulate(
    policy: Policy,
    builds: &[Build],
    restarts: &[(i64, &str)],
    nodes: &[String],
    capacity: usize,
    bound: i64,
) -> Outcome {
    let n = nodes.len();
    let mut pods: Vec<Pod> = (0..n)
        .map(|_| Pod {
            state: PodState::Ready,
            active: BTreeMap::new(),
            cache: VecDeque::new(),
        })
        .collect();
    let mut queue: BinaryHeap<Reverse<(i64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<_>, t: i64, e: Event| {
        seq += 1;
        queue.push(Reverse((t, seq, e)));
    };
    for (i, b) in builds.iter().enumerate() {
        push(&mut queue, b.arrival, Event::Arrive(i));
    }
    if policy != Policy::Never {
        for (t, _) in restarts {
            push(&mut queue, *t, Event::Restart);
        }
    }
    // Pending rolling restarts: pods still to restart, highest ordinal first.
    let mut rolling: VecDeque<usize> = VecDeque::new();
    let mut rolls_waiting = 0usize;
    let mut running: HashMap<usize, usize> = HashMap::new();
    let mut out = Outcome::default();
    let mut waited = vec![false; builds.len()];
    let poll = drain::POLL.as_secs();
    while let Some(Reverse((t, _, event))) = queue.pop() {
        match event {
            Event::Restart => {
                if rolling.is_empty() {
                    rolling.extend((0..n).rev());
                    let first = rolling[0];
                    push(&mut queue, t, Event::Terminate(first));
                } else {
                    // A restart during a restart: the controller rolls again once this one ends.
                    rolls_waiting += 1;
                }
            }
            Event::Terminate(i) => {
                pods[i].state = PodState::Draining(t);
                match policy {
                    Policy::Old => {
                        // No preStop: SIGTERM now aborts every build, the emptyDir goes.
                        out.interrupted += pods[i].active.len();
                        for id in std::mem::take(&mut pods[i].active).into_keys() {
                            running.remove(&id);
                        }
                        pods[i].cache.clear();
                        push(&mut queue, t + STOP_SECS.min(OLD_GRACE_SECS), Event::Stopped(i));
                    }
                    _ => push(&mut queue, t, Event::Poll(i)),
                }
            }
            Event::Poll(i) => {
                let PodState::Draining(since) = pods[i].state else {
                    continue;
                };
                let waited = t - since;
                if pods[i].active.is_empty() && waited >= poll {
                    push(&mut queue, t + STOP_SECS, Event::Stopped(i));
                } else if waited >= bound {
                    out.interrupted += pods[i].active.len();
                    for id in std::mem::take(&mut pods[i].active).into_keys() {
                        running.remove(&id);
                    }
                    push(&mut queue, t + STOP_SECS, Event::Stopped(i));
                } else {
                    push(&mut queue, t + poll.min(bound - waited), Event::Poll(i));
                }
            }
            Event::Stopped(i) => {
                // Anything that slipped in after the hook returned dies with the container.
                out.interrupted += pods[i].active.len();
                for id in std::mem::take(&mut pods[i].active).into_keys() {
                    running.remove(&id);
                }
                pods[i].state = PodState::Down;
                push(&mut queue, t + START_SECS, Event::Ready(i));
            }
            Event::Ready(i) => {
                pods[i].state = PodState::Ready;
                rolling.pop_front();
                if let Some(&next) = rolling.front() {
                    push(&mut queue, t, Event::Terminate(next));
                } else if rolls_waiting > 0 {
                    rolls_waiting -= 1;
                    push(&mut queue, t, Event::Restart);
                }
            }
            Event::Arrive(id) => {
                let build = &builds[id];
                // A draining pod still gets builds until its endpoint and DNS record are gone;
                // an old-policy pod stopped listening at SIGTERM, so kiln build falls over.
                let routable = |pod: &Pod| match pod.state {
                    PodState::Ready => true,
                    PodState::Draining(since) => policy != Policy::Old && t < since + ROUTING_LAG_SECS,
                    PodState::Down => false,
                };
                let candidates = order(nodes, &build.key);
                let Some(position) = candidates.iter().position(|c| routable(&pods[*c])) else {
                    // No daemon: kiln build's preflight retries a little later.
                    if !waited[id] {
                        waited[id] = true;
                        out.waited += 1;
                    }
                    push(&mut queue, t + 5, Event::Arrive(id));
                    continue;
                };
                let pod = candidates[position];
                out.fallovers += usize::from(position > 0);
                out.started += 1;
                out.warm += usize::from(pods[pod].cache.contains(&build.key));
                pods[pod].active.insert(id, t);
                running.insert(id, pod);
                push(&mut queue, t + build.duration, Event::Complete(id, pod));
            }
            Event::Complete(id, pod) => {
                if running.get(&id) != Some(&pod) {
                    continue; // interrupted earlier
                }
                running.remove(&id);
                pods[pod].active.remove(&id);
                let cache = &mut pods[pod].cache;
                if let Some(at) = cache.iter().position(|k| *k == builds[id].key) {
                    cache.remove(at);
                }
                cache.push_back(builds[id].key.clone());
                while cache.len() > capacity {
                    cache.pop_front();
                }
            }
        }
    }
    out
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench-farm: {e}");
            eprintln!(
                "usage: bench-farm [--overlays DIR] [--overlay NAME] [--builds-per-day N] [--repos N] [--zipf S] [--gib-per-repo G] [--seed N]"
            );
            std::process::exit(2);
        }
    };
    let resolved = match kiln::overlay::load(&args.overlays, &args.overlay) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench-farm: {e}");
            std::process::exit(1);
        }
    };
    let overlay = resolved.overlay;
    let replicas = overlay.buildkit.replicas.max(1);
    let nodes: Vec<String> = (0..replicas)
        .map(|i| format!("{}-{i}", overlay.buildkit.service_name))
        .collect();
    let timeout = overlay.tekton.timeout.as_secs();
    let bound = drain::bound(&overlay).as_secs();
    // A replica keeps the repositories that fit under its GC cap (3/4 of the cache size).
    let cache_bytes = overlay.buildkit.cache.size_bytes().unwrap_or(100 << 30) as f64;
    let capacity = ((cache_bytes * 0.75) / (args.gib_per_repo * (1u64 << 30) as f64))
        .floor()
        .max(1.0) as usize;
    let (runs, understood) = cron_runs(&overlay.rotation.schedule);
    let restarts = restarts(&overlay, &runs);
    let builds = builds(&args, timeout);

    println!("a year of overlay {} ({})", args.overlay, resolved.source);
    println!(
        "  {replicas} replicas ({:?}), tekton.timeout {}, cache {} -> {capacity} repositories per replica at {} GiB each",
        overlay.buildkit.workload,
        overlay.tekton.timeout,
        if overlay.buildkit.cache.size.is_empty() {
            "unsized (modelled as 100Gi)"
        } else {
            &overlay.buildkit.cache.size
        },
        args.gib_per_repo
    );
    if overlay.buildkit.workload == kiln::overlay::Workload::Deployment {
        println!("  note: modelled as the ring-routed StatefulSet of the same replicas");
    }
    println!(
        "  certs.validity {}, renew {} before expiry, rotation.schedule {:?}{}, propagationDelay {}",
        overlay.certs.validity,
        overlay.certs.leaf_renew_before(),
        overlay.rotation.schedule,
        if understood {
            ""
        } else {
            " (not read: modelled as daily 03:17)"
        },
        overlay.rotation.propagation_delay
    );
    let leaf = restarts.iter().filter(|(_, l)| *l == "leaf renewal").count();
    println!(
        "  {} rolling restarts: {leaf} leaf renewals + {} CA rollover steps; drain bound {bound}s, grace {}s",
        restarts.len(),
        restarts.len() - leaf,
        overlay.termination_grace().as_secs()
    );
    println!(
        "  {} builds from {} repositories (Zipf {}), {} per day, seed {}",
        builds.len(),
        args.repos,
        args.zipf,
        args.builds_per_day,
        args.seed
    );
    println!();
    let results: Vec<(&str, Outcome)> = [
        ("old: emptyDir, 30 s grace, no drain", Policy::Old),
        ("new: persistent cache, drain", Policy::New),
        ("never restarted (reference)", Policy::Never),
    ]
    .into_iter()
    .map(|(name, policy)| {
        (
            name,
            simulate(policy, &builds, &restarts, &nodes, capacity, bound),
        )
    })
    .collect();
    let reference = results[2].1.warm as f64 / results[2].1.started.max(1) as f64 * 100.0;
    println!(
        "{:<38} {:>12} {:>11} {:>12} {:>10} {:>9}",
        "policy", "interrupted", "warm cache", "vs reference", "fallovers", "waited"
    );
    for (name, o) in &results {
        let warm = o.warm as f64 / o.started.max(1) as f64 * 100.0;
        println!(
            "{name:<38} {:>12} {:>10.2}% {:>+11.2}pt {:>10} {:>9}",
            o.interrupted,
            warm,
            warm - reference,
            o.fallovers,
            o.waited
        );
    }
}
