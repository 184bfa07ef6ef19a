//! One build, start to end (network and process edge): ask the candidates for their load
//! and choose ([`choose_by_load`], the IO around the pure [`super::choose`]), then shake
//! hands, run buildctl, and retry as the failure allows ([`execute`]):
//!
//! - buildctl could not reach the daemon before the build started: the whole candidate
//!   list again, after a pause, at most `--attempts` runs;
//! - the daemon went away while the build ran (gRPC Unavailable, the connection lost): the
//!   whole build again on the next daemon in order, at most `--retries-after-interruption`
//!   times;
//! - anything else: buildctl's exit code, never retried.
//!
//! The Tekton results are written once, after the run that succeeded.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::buildctl::{self, BuildSpec, Outcome};
use super::choose::{self, Choice, Policy, Probe, Step, Verdict};
use super::preflight::{self, PreflightError, Retry, TlsFiles};
use super::{BuildError, Daemon, Results, history};

/// Ask the candidates (in the key's order) for their load and how much of it is for
/// `repository`, as the walk needs, each wave at once and each daemon within `timeout`, and
/// choose. With load-awareness off, or one candidate, nobody is asked.
pub async fn choose_by_load(
    candidates: &[Daemon],
    config: Arc<rustls::ClientConfig>,
    policy: &Policy,
    timeout: Duration,
    repository: &str,
) -> Choice {
    let mut probes: Vec<Probe> = Vec::new();
    loop {
        match choose::step(policy, candidates.len(), &probes) {
            Step::Chosen(choice) => return choice,
            Step::Ask(range) => {
                let answers = history::ask_all(&candidates[range], config.clone(), timeout, repository).await;
                probes.extend(answers.into_iter().map(|answer| match answer {
                    Ok(load) => Probe::Active(load),
                    Err(error) => Probe::NoAnswer(error.to_string()),
                }));
            }
        }
    }
}

/// The candidates in the order `choice` tries them.
pub fn ordered(candidates: &[Daemon], choice: &Choice) -> Vec<Daemon> {
    choice
        .order
        .iter()
        .filter_map(|position| candidates.get(*position).cloned())
        .collect()
}

/// What `kiln build --dry-run` reports, as `-o json` prints it (field order is stable).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    /// The affinity key, `<repository>:<context>`.
    pub key: String,
    /// `--load-factor` (0: off).
    pub load_factor: f64,
    /// The bound on active builds a daemon was held to, when loads were asked.
    pub bound: Option<u32>,
    /// How the repository's builds were spread, when over more than the key's first daemon.
    pub spread: Option<SpreadReport>,
    /// Every candidate in the key's order, with what the walk found.
    pub daemons: Vec<DaemonReport>,
    /// The order kiln tries them in: the chosen daemon first.
    pub order: Vec<String>,
    /// The chosen daemon.
    pub chosen: String,
    /// The buildctl command line for the chosen daemon, program first.
    pub argv: Vec<String>,
}

/// The spread of a busy repository in a [`DryRun`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpreadReport {
    /// The key's first `over` daemons take its builds, least loaded first.
    pub over: usize,
    /// Builds of the repository among those the daemons reported.
    pub repository_builds: u32,
    /// Every build the daemons reported, running and finished.
    pub reported_builds: u32,
}

/// One candidate in a [`DryRun`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonReport {
    /// `host:port`.
    pub daemon: String,
    /// The `--addr` buildctl gets.
    pub addr: String,
    /// Its active builds, when it answered.
    pub active_builds: Option<u32>,
    /// `chosen`, `eligible`, `over-bound`, `no-answer` or `not-asked`.
    pub verdict: &'static str,
    /// Why it did not answer.
    pub reason: Option<String>,
}

impl DryRun {
    /// The report for `choice` over `candidates`, with `argv` for the chosen daemon.
    pub fn new(
        key: &str,
        policy: &Policy,
        candidates: &[Daemon],
        choice: &Choice,
        argv: Vec<String>,
    ) -> Self {
        let chosen = choice.chosen();
        let daemons = candidates
            .iter()
            .enumerate()
            .map(|(position, daemon)| {
                let (active_builds, verdict, reason) = match choice.verdicts.get(position) {
                    _ if position == chosen => (
                        match choice.verdicts.get(position) {
                            Some(Verdict::Eligible(n) | Verdict::OverBound(n)) => Some(*n),
                            _ => None,
                        },
                        "chosen",
                        None,
                    ),
                    Some(Verdict::Eligible(n)) => (Some(*n), "eligible", None),
                    Some(Verdict::OverBound(n)) => (Some(*n), "over-bound", None),
                    Some(Verdict::NoAnswer(why)) => (None, "no-answer", Some(why.clone())),
                    None => (None, "not-asked", None),
                };
                DaemonReport {
                    daemon: daemon.name(),
                    addr: daemon.buildctl_addr(),
                    active_builds,
                    verdict,
                    reason,
                }
            })
            .collect();
        Self {
            key: key.to_string(),
            load_factor: if policy.load_aware(candidates.len()) {
                policy.load_factor
            } else {
                0.0
            },
            bound: choice.bound,
            spread: choice.spread.map(|spread| SpreadReport {
                over: spread.over,
                repository_builds: spread.same,
                reported_builds: spread.reported,
            }),
            daemons,
            order: ordered(candidates, choice).iter().map(Daemon::name).collect(),
            chosen: candidates.get(chosen).map(Daemon::name).unwrap_or_default(),
            argv,
        }
    }

    /// The text form: one line per fact.
    pub fn text(&self) -> String {
        let mut out = format!("key: {}\n", self.key);
        if let Some(bound) = self.bound {
            out.push_str(&format!(
                "load factor {}: at most {bound} active builds per daemon\n",
                self.load_factor
            ));
        }
        if let Some(spread) = &self.spread {
            out.push_str(&format!(
                "spread over the key's first {} daemons, least loaded first: its repository made {} of the {} builds they reported\n",
                spread.over, spread.repository_builds, spread.reported_builds
            ));
        }
        out.push_str("daemons, in the key's order:\n");
        for d in &self.daemons {
            let load = d
                .active_builds
                .map(|n| format!(", {n} active"))
                .unwrap_or_default();
            let reason = d.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
            out.push_str(&format!("  {} [{}{load}]{reason}\n", d.daemon, d.verdict));
        }
        out.push_str(&format!(
            "order: {}\nchosen: {}\nargv:",
            self.order.join(" "),
            self.chosen
        ));
        for arg in &self.argv {
            out.push(' ');
            out.push_str(&shell_quote(arg));
        }
        out.push('\n');
        out
    }
}

/// The whole buildctl command line for `daemon`, `program` first, as text.
pub fn argv_line(
    program: &std::path::Path,
    spec: &BuildSpec,
    daemon: &Daemon,
    files: &TlsFiles,
    metadata_file: &std::path::Path,
) -> Vec<String> {
    std::iter::once(program.display().to_string())
        .chain(
            buildctl::argv(spec, daemon, files, metadata_file)
                .into_iter()
                .map(|arg| arg.to_string_lossy().into_owned()),
        )
        .collect()
}

/// `arg` as a POSIX shell word.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%".contains(&b));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// Everything one build needs, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to build.
    pub spec: BuildSpec,
    /// The client TLS files, checked.
    pub files: TlsFiles,
    /// The daemons, in the order to try them.
    pub order: Vec<Daemon>,
    /// The buildctl program.
    pub buildctl: PathBuf,
    /// buildctl's `--metadata-file`.
    pub metadata_file: PathBuf,
    /// Where to write the Tekton results, if anywhere.
    pub results_dir: Option<PathBuf>,
    /// The limit for the whole build, reruns included.
    pub timeout: Duration,
    /// Handshake rounds and pauses; `rounds` also bounds buildctl runs that fail to connect.
    pub retry: Retry,
    /// How many times a build whose daemon went away is rerun on the next daemon.
    pub reruns_after_interruption: u32,
}

/// How a build ended, when it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Built; the results were written.
    Built(Results),
    /// buildctl failed with this exit code (its output says why).
    Failed(i32),
}

/// Why a build could not run to an outcome.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No daemon passed the handshake.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// buildctl could not be started or watched.
    #[error(transparent)]
    Buildctl(#[from] buildctl::RunError),
    /// The metadata file is unusable.
    #[error(transparent)]
    Metadata(#[from] BuildError),
    /// The results could not be written.
    #[error(transparent)]
    Results(#[from] buildctl::ResultsError),
    /// The metadata file of an earlier run could not be removed.
    #[error("failed to remove stale metadata file {path}: {source}")]
    StaleMetadata {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// buildctl succeeded but its metadata file could not be read.
    #[error("failed to read buildctl metadata file {path}: {source}; buildctl succeeded but wrote no digest")]
    ReadMetadata {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--timeout` ran out.
    #[error(
        "the build ran longer than --timeout {0} and buildctl was killed: raise --timeout, or check the daemon's load"
    )]
    TimedOut(String),
    /// Every run failed to connect.
    #[error("buildctl could not reach buildkitd after {0} attempts: see the errors above")]
    GaveUp(u32),
}

/// Run the build: handshake along `plan.order`, buildctl, the retries the module docs
/// describe, and the results. Blocks on `runtime`.
pub fn execute(
    plan: &Plan,
    ca_config: Arc<rustls::ClientConfig>,
    runtime: &tokio::runtime::Runtime,
) -> Result<Finished, RunError> {
    let deadline = Instant::now() + plan.timeout;
    let attempts = plan.retry.rounds.max(1);
    let mut connect_failures = 0u32;
    let mut reruns = 0u32;
    let mut from = 0usize;
    loop {
        let remaining = &plan.order[from..];
        let chosen = from
            + runtime.block_on(preflight::choose_daemon(
                remaining,
                ca_config.clone(),
                &plan.files.ca,
                plan.retry,
            ))?;
        let daemon = &plan.order[chosen];
        if chosen > 0 {
            tracing::warn!(daemon = %daemon.name(), "building on a fallover daemon; its cache for this repository may be cold");
        }
        let args: Vec<OsString> = buildctl::argv(&plan.spec, daemon, &plan.files, &plan.metadata_file);
        // A metadata file left from an earlier run must not be mistaken for this one's.
        match std::fs::remove_file(&plan.metadata_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RunError::StaleMetadata {
                    path: plan.metadata_file.display().to_string(),
                    source,
                });
            }
        }
        let run = connect_failures + reruns + 1;
        tracing::info!(daemon = %daemon.name(), image = %plan.spec.image, run, "running buildctl");
        let left = deadline.saturating_duration_since(Instant::now());
        match runtime.block_on(buildctl::run(&plan.buildctl, &args, left))? {
            Outcome::Success => return finish(plan).map(Finished::Built),
            Outcome::ConnectionError(code) if connect_failures + 1 < attempts => {
                let pause = plan.retry.pause(connect_failures);
                connect_failures += 1;
                tracing::warn!(
                    code,
                    daemon = %daemon.name(),
                    "buildctl could not reach buildkitd before the build started; retrying in {pause:?}"
                );
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            }
            Outcome::Interrupted(code, line) => {
                let next = plan.order.get(chosen + 1);
                match next {
                    Some(next) if reruns < plan.reruns_after_interruption => {
                        reruns += 1;
                        tracing::warn!(
                            "buildkitd {} went away while the build ran ({}); rerunning the whole build on {}, the next daemon in the choice's order (rerun {reruns} of {})",
                            daemon.name(),
                            line.trim_start_matches("error: "),
                            next.name(),
                            plan.reruns_after_interruption
                        );
                        from = chosen + 1;
                    }
                    _ => {
                        let why = if next.is_none() {
                            "no daemon is left in the choice's order".to_string()
                        } else {
                            format!(
                                "--retries-after-interruption {} used up",
                                plan.reruns_after_interruption
                            )
                        };
                        tracing::error!(
                            code,
                            "buildkitd {} went away while the build ran; not rerun: {why}",
                            daemon.name()
                        );
                        return Ok(Finished::Failed(code));
                    }
                }
            }
            Outcome::ConnectionError(code) | Outcome::Failed(code) => {
                tracing::error!(code, "buildctl failed");
                return Ok(Finished::Failed(code));
            }
            Outcome::TimedOut => return Err(RunError::TimedOut(human(plan.timeout))),
        }
        if Instant::now() >= deadline {
            return Err(RunError::TimedOut(human(plan.timeout)));
        }
        if connect_failures >= attempts {
            return Err(RunError::GaveUp(attempts));
        }
    }
}

fn human(d: Duration) -> String {
    crate::duration::Duration::from_secs(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).to_string()
}

fn finish(plan: &Plan) -> Result<Results, RunError> {
    let metadata_path = plan.metadata_file.display().to_string();
    let metadata = match std::fs::read_to_string(&plan.metadata_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !plan.spec.push => "{}".to_string(),
        Err(source) => {
            return Err(RunError::ReadMetadata {
                path: metadata_path,
                source,
            });
        }
    };
    let results = super::results_from_metadata(&plan.spec.image, plan.spec.push, &metadata_path, &metadata)?;
    match &results.image_digest {
        Some(digest) => tracing::info!(image = %results.image_url, %digest, "built"),
        None => {
            tracing::warn!(image = %results.image_url, "built, but buildctl reported no digest; IMAGE_DIGEST is not written")
        }
    }
    if let Some(dir) = &plan.results_dir {
        buildctl::write_results(dir, &results)?;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote("--opt"), "--opt");
        assert_eq!(shell_quote("build-arg:A=b c"), "'build-arg:A=b c'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn dry_run_reports_every_candidate() {
        let candidates: Vec<Daemon> = (0..4)
            .map(|i| Daemon {
                host: format!("buildkitd-{i}.buildkitd.ci.svc"),
                port: 1234,
                connect_to: None,
            })
            .collect();
        let policy = Policy::with_load_factor(1.25);
        let probes = [
            Probe::active(5),
            Probe::NoAnswer("no answer within 500ms".into()),
            Probe::active(0),
        ];
        let Step::Chosen(choice) = choose::step(&policy, 4, &probes) else {
            panic!("the walk should be done")
        };
        let report = DryRun::new("k", &policy, &candidates, &choice, vec!["buildctl".into()]);
        let verdicts: Vec<&str> = report.daemons.iter().map(|d| d.verdict).collect();
        assert_eq!(verdicts, ["over-bound", "no-answer", "chosen", "not-asked"]);
        assert_eq!(report.chosen, "buildkitd-2.buildkitd.ci.svc:1234");
        assert_eq!(report.order[0], report.chosen);
        assert_eq!(
            report.order[1], "buildkitd-3.buildkitd.ci.svc:1234",
            "not asked before full"
        );
        assert_eq!(report.daemons[2].active_builds, Some(0));
        let json = serde_json::to_string(&report).unwrap();
        assert!(
            json.starts_with(r#"{"key":"k","loadFactor":1.25,"bound":"#),
            "{json}"
        );
    }
}
