//! The pure rotation planner: `plan(state, now, policy) -> Vec<Action>`.
//!
//! One run does at most one step of the CA rollover, and only once the previous step
//! is complete (every Secret matches the phase, the restart is done, the rollout is
//! over). Within a step the order is fixed: CA Secret, client Secret, daemon Secret,
//! restart. Each Secret write moves toward a target that is derived from the CA
//! Secret alone, so a crash between any two writes leaves a state whose next plan
//! finishes the step.
//!
//! Rollover, with old CA A and new CA B (bundles are listed oldest first):
//!
//! | phase            | CA Secret                  | leaves from | bundles |
//! |------------------|----------------------------|-------------|---------|
//! | stable           | `ca` = A                   | A           | [A]     |
//! | introduced       | `ca` = A, `next-ca` = B    | A           | [A, B]  |
//! | leaves-reissued  | `ca` = B, `retiring-ca` = A| B           | [A, B]  |
//! | stable           | `ca` = B                   | B           | [B]     |
//!
//! A step is taken only after the propagation delay has passed since the last
//! leaf-Secret write (every running client loaded the current bundle) and the daemon
//! rollout is complete (every running daemon loaded the current daemon Secret).

use time::OffsetDateTime;

use crate::overlay::RestartStrategy;
use crate::pki::LeafKind;

use super::state::{CaSecret, Leaf, OtherCa, Phase, Slot, State};

/// How far `not_before` of new certificates is set back, so a node whose clock runs
/// behind (clock skew of minutes) still accepts them.
pub const BACKDATE: time::Duration = time::Duration::hours(1);

/// What `--force-renew` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForceRenew {
    /// Reissue the daemon and client certificates now.
    Leaf,
    /// Start a CA rollover now (its phases still wait for their delays).
    Ca,
}

/// The rotation policy, from the overlay and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// CA lifetime.
    pub ca_validity: time::Duration,
    /// Leaf lifetime.
    pub leaf_validity: time::Duration,
    /// Renew a leaf when less than this is left.
    pub leaf_renew_before: time::Duration,
    /// Start a CA rollover when less than this is left.
    pub ca_renew_before: time::Duration,
    /// How long each rollover phase waits for the new trust to reach every client.
    pub propagation_delay: time::Duration,
    /// How buildkitd is restarted.
    pub restart: RestartStrategy,
    /// The SANs the daemon certificate must carry.
    pub daemon_sans: Vec<String>,
    /// `--force-renew`.
    pub force: Option<ForceRenew>,
}

/// A CA referred to by an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaRef {
    /// The CA made by this plan's [`Action::IssueCa`].
    New,
    /// A CA in the CA Secret, by fingerprint.
    Existing(String),
}

/// The role of the second CA in the CA Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherRole {
    /// Being introduced.
    Next,
    /// Being retired.
    Retiring,
}

/// What goes into a leaf Secret's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafCert {
    /// Keep the current certificate and key (only the bundle or annotations change).
    Keep,
    /// Issue a new certificate and key.
    Issue {
        /// The signing CA.
        signer: CaRef,
        /// Start of validity.
        not_before: OffsetDateTime,
        /// End of validity.
        not_after: OffsetDateTime,
    },
}

/// One step of a plan, in the order it must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make a new CA (in memory; [`Action::WriteCa`] stores it).
    IssueCa {
        /// Start of validity.
        not_before: OffsetDateTime,
        /// End of validity.
        not_after: OffsetDateTime,
    },
    /// Write the CA Secret.
    WriteCa {
        /// The CA that signs leaves.
        signing: CaRef,
        /// The second CA during a rollover.
        other: Option<(OtherRole, CaRef)>,
        /// The phase this starts.
        phase: Phase,
        /// Why.
        reason: String,
    },
    /// Write the daemon or client Secret.
    WriteLeaf {
        /// Which Secret.
        kind: LeafKind,
        /// The trust bundle, oldest CA first.
        bundle: Vec<CaRef>,
        /// The certificate.
        cert: LeafCert,
        /// Why.
        reason: String,
    },
    /// Restart buildkitd so it loads the daemon Secret.
    Restart {
        /// Why.
        reason: String,
    },
    /// Something an operator must hear about.
    Warn {
        /// The one-line message.
        message: String,
    },
}

/// The CA layout a plan converges the leaves to.
struct Target {
    signing: CaRef,
    signing_not_before: OffsetDateTime,
    signing_not_after: OffsetDateTime,
    /// (CA, not_before) oldest first.
    bundle: Vec<(CaRef, OffsetDateTime)>,
}

impl Target {
    fn from_ca(ca: &CaSecret) -> Self {
        let signing = CaRef::Existing(ca.signing.info.fingerprint.clone());
        let mut bundle = vec![(signing.clone(), ca.signing.info.not_before)];
        if let Some(OtherCa::Next(other) | OtherCa::Retiring(other)) = &ca.other {
            bundle.push((
                CaRef::Existing(other.info.fingerprint.clone()),
                other.info.not_before,
            ));
        }
        bundle.sort_by_key(|(_, not_before)| *not_before);
        Self {
            signing,
            signing_not_before: ca.signing.info.not_before,
            signing_not_after: ca.signing.info.not_after,
            bundle,
        }
    }

    fn bundle_refs(&self) -> Vec<CaRef> {
        self.bundle.iter().map(|(ca, _)| ca.clone()).collect()
    }

    /// True when `leaf` already holds exactly this bundle.
    fn bundle_matches(&self, leaf: &Leaf) -> bool {
        leaf.bundle.len() == self.bundle.len()
            && self
                .bundle
                .iter()
                .zip(&leaf.bundle)
                .all(|((ca, _), fp)| matches!(ca, CaRef::Existing(want) if want == fp))
    }

    fn signed_by_signing(&self, leaf: &Leaf) -> bool {
        matches!(&self.signing, CaRef::Existing(fp) if leaf.issuer.as_deref() == Some(fp.as_str()))
    }
}

/// Decide what to do with one leaf Secret. Returns the action and, for repairs, a warning.
fn leaf_action(
    slot: &Slot<Leaf>,
    kind: LeafKind,
    target: &Target,
    now: OffsetDateTime,
    policy: &Policy,
) -> (Option<Action>, Option<String>) {
    let name = match kind {
        LeafKind::Daemon => "daemon",
        LeafKind::Client => "client",
    };
    let not_before = now.saturating_sub(BACKDATE).max(target.signing_not_before);
    let not_after = now
        .saturating_add(policy.leaf_validity)
        .min(target.signing_not_after);
    let issue = |reason: String| Action::WriteLeaf {
        kind,
        bundle: target.bundle_refs(),
        cert: LeafCert::Issue {
            signer: target.signing.clone(),
            not_before,
            not_after,
        },
        reason,
    };
    let keep = |reason: String| Action::WriteLeaf {
        kind,
        bundle: target.bundle_refs(),
        cert: LeafCert::Keep,
        reason,
    };
    let leaf = match slot {
        Slot::Missing | Slot::Empty => {
            return (Some(issue(format!("bootstrap: no {name} certificate yet"))), None);
        }
        Slot::Broken(why) => {
            let warning = format!("the {name} Secret is broken ({why}); reissuing it");
            return (Some(issue(format!("repair: {why}"))), Some(warning));
        }
        Slot::Ok(leaf) => leaf,
    };
    if !target.signed_by_signing(leaf) {
        let reason = match target.signing {
            CaRef::New => format!("the {name} certificate must come from the new CA"),
            CaRef::Existing(ref fp) => format!(
                "the {name} certificate is not signed by the signing CA {}",
                super::short_hex(fp)
            ),
        };
        return (Some(issue(reason)), None);
    }
    if leaf.info.not_after <= now {
        let warning = format!(
            "the {name} certificate expired at {}; reissuing it (connections fail until restarts pick it up)",
            crate::pki::rfc3339(leaf.info.not_after)
        );
        return (
            Some(issue(format!("repair: expired {name} certificate"))),
            Some(warning),
        );
    }
    let left = leaf.info.not_after - now;
    // A new leaf cannot outlive its CA; renewing is pointless when it would not last longer.
    let renewal_helps = not_after > leaf.info.not_after.saturating_add(time::Duration::hours(1));
    if policy.force == Some(ForceRenew::Leaf) {
        return (
            Some(issue(format!(
                "--force-renew leaf: reissuing the {name} certificate"
            ))),
            None,
        );
    }
    if left < policy.leaf_renew_before && renewal_helps {
        return (
            Some(issue(format!(
                "renew: the {name} certificate expires in {} days",
                left.whole_days()
            ))),
            None,
        );
    }
    if kind == LeafKind::Daemon {
        let mut have = leaf.sans.clone();
        let mut want = policy.daemon_sans.clone();
        have.sort();
        want.sort();
        if have != want {
            return (
                Some(issue(
                    "the daemon certificate's SANs differ from the overlay".into(),
                )),
                None,
            );
        }
    }
    if !target.bundle_matches(leaf) {
        return (Some(keep(format!("update the {name} trust bundle"))), None);
    }
    if leaf.updated_at.is_none() {
        return (
            Some(keep(format!("stamp the {name} Secret's kiln.dev annotations"))),
            None,
        );
    }
    (None, None)
}

/// Leaf and restart actions that bring the Secrets to `target`.
fn converge(state: &State, target: &Target, now: OffsetDateTime, policy: &Policy, out: &mut Vec<Action>) {
    let mut daemon_written = false;
    for (slot, kind) in [
        (&state.client, LeafKind::Client),
        (&state.daemon, LeafKind::Daemon),
    ] {
        let (action, warning) = leaf_action(slot, kind, target, now, policy);
        if let Some(message) = warning {
            out.push(Action::Warn { message });
        }
        if let Some(action) = action {
            daemon_written |= kind == LeafKind::Daemon;
            out.push(action);
        }
    }
    if policy.restart == RestartStrategy::None {
        if daemon_written {
            out.push(Action::Warn {
                message: "restartStrategy is none: restart buildkitd yourself so it loads the new daemon certificate"
                    .into(),
            });
        }
        return;
    }
    if daemon_written {
        out.push(Action::Restart {
            reason: "the daemon Secret changed".into(),
        });
    } else if let (Slot::Ok(daemon), Some(workload)) = (&state.daemon, &state.workload)
        && workload.daemon_certs.as_deref() != Some(daemon.version().as_str())
    {
        out.push(Action::Restart {
            reason: "the running daemons were not restarted for the current daemon Secret".into(),
        });
    }
}

/// True when the Secrets match the current phase, the restart happened and the
/// rollout is over, and the propagation delay has passed since the last leaf write.
fn step_settled(state: &State, now: OffsetDateTime, policy: &Policy) -> Result<(), String> {
    let (Slot::Ok(daemon), Slot::Ok(client)) = (&state.daemon, &state.client) else {
        return Err("the leaf Secrets are not complete".into());
    };
    if policy.restart == RestartStrategy::Rollout {
        let Some(workload) = &state.workload else {
            return Err("the buildkitd workload does not exist".into());
        };
        if workload.daemon_certs.as_deref() != Some(daemon.version().as_str()) {
            return Err("buildkitd was not restarted for the current daemon Secret".into());
        }
        if !workload.rollout_complete {
            return Err("the buildkitd rollout is not complete".into());
        }
    }
    let last_write = match (daemon.updated_at, client.updated_at) {
        (Some(d), Some(c)) => d.max(c),
        _ => return Err("the leaf Secrets have no kiln.dev/updated-at".into()),
    };
    let ready_at = last_write.saturating_add(policy.propagation_delay);
    if now < ready_at {
        return Err(format!(
            "waiting for the propagation delay until {}",
            crate::pki::rfc3339(ready_at)
        ));
    }
    Ok(())
}

/// Plan one run. Pure: the same state, time and policy give the same actions.
pub fn plan(state: &State, now: OffsetDateTime, policy: &Policy) -> Vec<Action> {
    let mut out: Vec<Action> = state
        .warnings
        .iter()
        .map(|message| Action::Warn {
            message: message.clone(),
        })
        .collect();
    let new_ca_not_before = now.saturating_sub(BACKDATE);
    let new_ca_not_after = now.saturating_add(policy.ca_validity);
    let issue_new_ca = |out: &mut Vec<Action>, reason: String| {
        out.push(Action::IssueCa {
            not_before: new_ca_not_before,
            not_after: new_ca_not_after,
        });
        out.push(Action::WriteCa {
            signing: CaRef::New,
            other: None,
            phase: Phase::Stable,
            reason,
        });
        Target {
            signing: CaRef::New,
            signing_not_before: new_ca_not_before,
            signing_not_after: new_ca_not_after,
            bundle: vec![(CaRef::New, new_ca_not_before)],
        }
    };

    let ca = match &state.ca {
        Slot::Missing | Slot::Empty => {
            let has_leaves = state.daemon.ok().is_some() || state.client.ok().is_some();
            if has_leaves {
                out.push(Action::Warn {
                    message: "the CA Secret is empty but the leaf Secrets hold certificates: the CA key is lost; starting over with a new CA (clients and daemons trust each other again once both use the new certificates)".into(),
                });
            }
            let target = issue_new_ca(&mut out, "bootstrap: no CA yet".into());
            converge(state, &target, now, policy, &mut out);
            return out;
        }
        Slot::Broken(why) => {
            out.push(Action::Warn {
                message: format!(
                    "the CA Secret is unusable ({why}); starting over with a new CA (clients and daemons trust each other again once both use the new certificates)"
                ),
            });
            let target = issue_new_ca(&mut out, format!("repair: {why}"));
            converge(state, &target, now, policy, &mut out);
            return out;
        }
        Slot::Ok(ca) => ca,
    };
    if ca.signing.info.not_after <= now {
        out.push(Action::Warn {
            message: format!(
                "the signing CA expired at {}; starting over with a new CA (clients and daemons trust each other again once both use the new certificates)",
                crate::pki::rfc3339(ca.signing.info.not_after)
            ),
        });
        let target = issue_new_ca(&mut out, "repair: expired CA".into());
        converge(state, &target, now, policy, &mut out);
        return out;
    }

    let current = Target::from_ca(ca);
    let before = out.len();
    converge(state, &current, now, policy, &mut out);
    if out[before..]
        .iter()
        .any(|a| matches!(a, Action::WriteLeaf { .. } | Action::Restart { .. }))
    {
        // Finish the current step first; the next step waits for a later run.
        return out;
    }

    let ca_left = ca.signing.info.not_after - now;
    let wants_step = match ca.phase() {
        Phase::Stable => policy.force == Some(ForceRenew::Ca) || ca_left < policy.ca_renew_before,
        Phase::Introduced | Phase::LeavesReissued => true,
    };
    if !wants_step {
        return out;
    }
    if let Err(why) = step_settled(state, now, policy) {
        if ca.phase() == Phase::Stable && policy.force == Some(ForceRenew::Ca) {
            out.push(Action::Warn {
                message: format!("--force-renew ca: the rollover cannot start yet: {why}"),
            });
        } else if ca_left < policy.propagation_delay.saturating_mul(2) {
            out.push(Action::Warn {
                message: format!(
                    "the signing CA expires at {} and the rollover (phase {}) cannot proceed: {why}",
                    crate::pki::rfc3339(ca.signing.info.not_after),
                    ca.phase()
                ),
            });
        }
        return out;
    }
    let signing_fp = ca.signing.info.fingerprint.clone();
    let next = match ca.phase() {
        Phase::Stable => {
            out.push(Action::IssueCa {
                not_before: new_ca_not_before,
                not_after: new_ca_not_after,
            });
            let reason = if ca_left < policy.ca_renew_before {
                format!(
                    "CA rollover: the CA expires in {} days; introducing the next CA",
                    ca_left.whole_days()
                )
            } else {
                "CA rollover (--force-renew ca): introducing the next CA".into()
            };
            out.push(Action::WriteCa {
                signing: CaRef::Existing(signing_fp.clone()),
                other: Some((OtherRole::Next, CaRef::New)),
                phase: Phase::Introduced,
                reason,
            });
            let mut bundle = current.bundle.clone();
            bundle.push((CaRef::New, new_ca_not_before));
            Target { bundle, ..current }
        }
        Phase::Introduced => {
            let Some(OtherCa::Next(next)) = &ca.other else {
                return out;
            };
            out.push(Action::WriteCa {
                signing: CaRef::Existing(next.info.fingerprint.clone()),
                other: Some((OtherRole::Retiring, CaRef::Existing(signing_fp))),
                phase: Phase::LeavesReissued,
                reason: "CA rollover: every client and daemon trusts the next CA; issuing leaves from it"
                    .into(),
            });
            Target {
                signing: CaRef::Existing(next.info.fingerprint.clone()),
                signing_not_before: next.info.not_before,
                signing_not_after: next.info.not_after,
                bundle: current.bundle,
            }
        }
        Phase::LeavesReissued => {
            out.push(Action::WriteCa {
                signing: CaRef::Existing(signing_fp.clone()),
                other: None,
                phase: Phase::Stable,
                reason: "CA rollover: every client and daemon uses the new CA; retiring the old one".into(),
            });
            Target {
                bundle: vec![(CaRef::Existing(signing_fp), ca.signing.info.not_before)],
                ..current
            }
        }
    };
    converge(state, &next, now, policy, &mut out);
    out
}

/// The next time `plan` would do something, searching the dates where something can
/// change (renewal windows, the CA window, the propagation delay), up to `horizon`.
pub fn next_action(
    state: &State,
    now: OffsetDateTime,
    policy: &Policy,
) -> Option<(OffsetDateTime, Vec<Action>)> {
    let mut candidates = vec![now];
    let leaves = [state.daemon.ok(), state.client.ok()];
    for leaf in leaves.into_iter().flatten() {
        candidates.push(leaf.info.not_after.saturating_sub(policy.leaf_renew_before));
        if let Some(at) = leaf.updated_at {
            candidates.push(at.saturating_add(policy.propagation_delay));
        }
    }
    if let Some(ca) = state.ca.ok() {
        candidates.push(ca.signing.info.not_after.saturating_sub(policy.ca_renew_before));
    }
    candidates.retain(|t| *t >= now);
    candidates.sort();
    candidates.into_iter().find_map(|t| {
        // Just past the boundary, so "less than" comparisons flip.
        let at = if t == now {
            t
        } else {
            t.saturating_add(time::Duration::seconds(1))
        };
        let actions: Vec<Action> = plan(state, at, policy)
            .into_iter()
            .filter(|a| !matches!(a, Action::Warn { .. }))
            .collect();
        (!actions.is_empty()).then_some((at, actions))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotate::state::{Ca, CertInfo, KeyPem, Workload};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2030-06-01 03:17 UTC);
    const DAY: time::Duration = time::Duration::days(1);

    fn policy() -> Policy {
        Policy {
            ca_validity: DAY * (5 * 365),
            leaf_validity: DAY * 90,
            leaf_renew_before: DAY * 30,
            ca_renew_before: DAY * (5 * 365 / 3),
            propagation_delay: DAY * 2,
            restart: RestartStrategy::Rollout,
            daemon_sans: vec!["buildkitd".into(), "buildkitd.ns".into()],
            force: None,
        }
    }

    fn info(fp: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertInfo {
        CertInfo {
            fingerprint: fp.into(),
            serial: format!("{fp}-serial"),
            not_before,
            not_after,
        }
    }

    fn ca(fp: &str, born: OffsetDateTime) -> Ca {
        Ca {
            info: info(fp, born, born.saturating_add(DAY * (5 * 365))),
            cert_pem: String::new(),
            key_pem: Some(KeyPem(String::new())),
        }
    }

    fn leaf(fp: &str, issuer: &str, bundle: &[&str], born: OffsetDateTime, sans: &[&str]) -> Leaf {
        Leaf {
            info: info(fp, born, born.saturating_add(DAY * 90)),
            issuer: Some(issuer.into()),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            bundle: bundle.iter().map(|s| s.to_string()).collect(),
            cert_pem: String::new(),
            key_pem: KeyPem(String::new()),
            updated_at: Some(born),
        }
    }

    /// A settled stable state: CA "A" born `ca_born`, leaves born `leaf_born`, rollout done.
    fn stable(ca_born: OffsetDateTime, leaf_born: OffsetDateTime) -> State {
        let daemon = leaf("d1", "A", &["A"], leaf_born, &["buildkitd", "buildkitd.ns"]);
        let workload = Workload {
            daemon_certs: Some(daemon.version()),
            rollout_complete: true,
        };
        State {
            ca: Slot::Ok(CaSecret {
                signing: ca("A", ca_born),
                other: None,
                phase_since: None,
            }),
            daemon: Slot::Ok(daemon),
            client: Slot::Ok(leaf("c1", "A", &["A"], leaf_born, &[])),
            workload: Some(workload),
            warnings: Vec::new(),
        }
    }

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::IssueCa { .. } => "issue-ca".to_string(),
                Action::WriteCa { phase, .. } => format!("write-ca:{phase}"),
                Action::WriteLeaf { kind, cert, .. } => format!(
                    "{}:{}",
                    if *kind == LeafKind::Daemon {
                        "daemon"
                    } else {
                        "client"
                    },
                    if *cert == LeafCert::Keep { "keep" } else { "issue" }
                ),
                Action::Restart { .. } => "restart".into(),
                Action::Warn { .. } => "warn".into(),
            })
            .collect()
    }

    fn leaf_mut(slot: &mut Slot<Leaf>) -> &mut Leaf {
        match slot {
            Slot::Ok(leaf) => leaf,
            _ => panic!("not a leaf"),
        }
    }

    /// Mark the daemons as restarted and rolled out for the current daemon Secret.
    fn rolled_out(state: &mut State) {
        let version = state.daemon.ok().map(Leaf::version);
        state.workload = Some(Workload {
            daemon_certs: version,
            rollout_complete: true,
        });
    }

    #[test]
    fn bootstrap_from_nothing_writes_ca_then_client_then_daemon_then_restarts() {
        let state = State {
            ca: Slot::Missing,
            daemon: Slot::Empty,
            client: Slot::Missing,
            workload: Some(Workload {
                daemon_certs: None,
                rollout_complete: true,
            }),
            warnings: Vec::new(),
        };
        let actions = plan(&state, NOW, &policy());
        assert_eq!(
            kinds(&actions),
            [
                "issue-ca",
                "write-ca:stable",
                "client:issue",
                "daemon:issue",
                "restart"
            ]
        );
        let Action::WriteLeaf { bundle, cert, .. } = &actions[2] else {
            panic!()
        };
        assert_eq!(bundle, &vec![CaRef::New]);
        let LeafCert::Issue {
            not_before,
            not_after,
            ..
        } = cert
        else {
            panic!()
        };
        assert_eq!(*not_before, NOW - BACKDATE);
        assert_eq!(*not_after, NOW + DAY * 90);
    }

    #[test]
    fn settled_fresh_state_plans_nothing_and_is_deterministic() {
        let state = stable(NOW - DAY * 100, NOW - DAY * 10);
        assert!(plan(&state, NOW, &policy()).is_empty());
        assert_eq!(plan(&state, NOW, &policy()), plan(&state, NOW, &policy()));
    }

    #[test]
    fn client_in_renew_window_is_renewed_without_restart() {
        let mut state = stable(NOW - DAY * 100, NOW - DAY * 10);
        leaf_mut(&mut state.client).info.not_after = NOW + DAY * 29;
        assert_eq!(kinds(&plan(&state, NOW, &policy())), ["client:issue"]);
    }

    #[test]
    fn daemon_in_renew_window_is_renewed_then_restarted() {
        let state = stable(NOW - DAY * 100, NOW - DAY * 61);
        assert_eq!(
            kinds(&plan(&state, NOW, &policy())),
            ["client:issue", "daemon:issue", "restart"]
        );
    }

    #[test]
    fn changed_sans_reissue_the_daemon_certificate() {
        let mut state = stable(NOW - DAY * 100, NOW - DAY * 10);
        leaf_mut(&mut state.daemon).sans = vec!["old-name".into()];
        assert_eq!(kinds(&plan(&state, NOW, &policy())), ["daemon:issue", "restart"]);
    }

    #[test]
    fn pending_restart_is_finished() {
        let mut state = stable(NOW - DAY * 100, NOW - DAY * 10);
        state.workload = Some(Workload {
            daemon_certs: Some("stale".into()),
            rollout_complete: true,
        });
        assert_eq!(kinds(&plan(&state, NOW, &policy())), ["restart"]);
    }

    #[test]
    fn restart_strategy_none_never_restarts() {
        let mut p = policy();
        p.restart = RestartStrategy::None;
        let state = stable(NOW - DAY * 100, NOW - DAY * 61);
        assert_eq!(
            kinds(&plan(&state, NOW, &p)),
            ["client:issue", "daemon:issue", "warn"]
        );
    }

    #[test]
    fn full_rollover_goes_through_three_gated_steps() {
        let p = policy();
        // CA born 4 years ago: in its last third.
        let mut state = stable(NOW - DAY * (4 * 365), NOW - DAY * 10);
        let step1 = plan(&state, NOW, &p);
        assert_eq!(
            kinds(&step1),
            [
                "issue-ca",
                "write-ca:introduced",
                "client:keep",
                "daemon:keep",
                "restart"
            ]
        );
        let Action::WriteLeaf { bundle, .. } = &step1[2] else {
            panic!()
        };
        assert_eq!(bundle, &vec![CaRef::Existing("A".into()), CaRef::New]);

        // After step 1: both bundles [A, B], written at NOW.
        let t1 = NOW;
        state.ca = Slot::Ok(CaSecret {
            signing: ca("A", NOW - DAY * (4 * 365)),
            other: Some(OtherCa::Next(ca("B", t1 - BACKDATE))),
            phase_since: Some(t1),
        });
        for slot in [&mut state.client, &mut state.daemon] {
            let l = leaf_mut(slot);
            l.bundle = vec!["A".into(), "B".into()];
            l.updated_at = Some(t1);
        }
        // Not restarted yet: only the restart.
        assert_eq!(kinds(&plan(&state, t1 + DAY * 3, &p)), ["restart"]);
        rolled_out(&mut state);
        // Rolled out, but the propagation delay has not passed.
        assert!(plan(&state, t1 + DAY, &p).is_empty());
        // Rollout incomplete: wait even after the delay.
        state.workload.as_mut().unwrap().rollout_complete = false;
        assert!(plan(&state, t1 + DAY * 3, &p).is_empty());
        state.workload.as_mut().unwrap().rollout_complete = true;

        let t2 = t1 + DAY * 3;
        let step2 = plan(&state, t2, &p);
        assert_eq!(
            kinds(&step2),
            [
                "write-ca:leaves-reissued",
                "client:issue",
                "daemon:issue",
                "restart"
            ]
        );
        let Action::WriteLeaf { bundle, cert, .. } = &step2[1] else {
            panic!()
        };
        assert_eq!(
            bundle,
            &vec![CaRef::Existing("A".into()), CaRef::Existing("B".into())]
        );
        assert!(matches!(cert, LeafCert::Issue { signer: CaRef::Existing(fp), .. } if fp == "B"));

        // After step 2.
        state.ca = Slot::Ok(CaSecret {
            signing: ca("B", t1 - BACKDATE),
            other: Some(OtherCa::Retiring(ca("A", NOW - DAY * (4 * 365)))),
            phase_since: Some(t2),
        });
        state.client = Slot::Ok(leaf("c2", "B", &["A", "B"], t2, &[]));
        state.daemon = Slot::Ok(leaf("d2", "B", &["A", "B"], t2, &["buildkitd", "buildkitd.ns"]));
        rolled_out(&mut state);
        assert!(plan(&state, t2 + DAY, &p).is_empty());
        let t3 = t2 + DAY * 2;
        let step3 = plan(&state, t3, &p);
        assert_eq!(
            kinds(&step3),
            ["write-ca:stable", "client:keep", "daemon:keep", "restart"]
        );
        let Action::WriteLeaf { bundle, .. } = &step3[1] else {
            panic!()
        };
        assert_eq!(bundle, &vec![CaRef::Existing("B".into())]);
    }

    #[test]
    fn crash_after_the_ca_write_is_finished_by_the_next_run() {
        let mut state = stable(NOW - DAY * (4 * 365), NOW - DAY * 10);
        state.ca = Slot::Ok(CaSecret {
            signing: ca("A", NOW - DAY * (4 * 365)),
            other: Some(OtherCa::Next(ca("B", NOW))),
            phase_since: Some(NOW),
        });
        // The bundles still say [A]: finish step 1, do not start step 2.
        assert_eq!(
            kinds(&plan(&state, NOW + DAY * 5, &policy())),
            ["client:keep", "daemon:keep", "restart"]
        );
    }

    #[test]
    fn broken_or_expired_ca_starts_over_loudly() {
        let mut state = stable(NOW - DAY * 100, NOW - DAY * 10);
        state.ca = Slot::Broken("key ca.key is missing: the CA key is lost".into());
        let actions = plan(&state, NOW, &policy());
        assert_eq!(
            kinds(&actions),
            [
                "warn",
                "issue-ca",
                "write-ca:stable",
                "client:issue",
                "daemon:issue",
                "restart"
            ]
        );
        let Action::Warn { message } = &actions[0] else {
            panic!()
        };
        assert!(message.contains("starting over with a new CA"), "{message}");

        let state = stable(NOW - DAY * (6 * 365), NOW - DAY * 10);
        assert_eq!(kinds(&plan(&state, NOW, &policy()))[..2], ["warn", "issue-ca"]);
    }

    #[test]
    fn broken_and_expired_leaves_are_repaired_with_a_warning() {
        let mut state = stable(NOW - DAY * 100, NOW - DAY * 10);
        state.client = Slot::Broken("key cert.pem: failed to read PEM block 1".into());
        leaf_mut(&mut state.daemon).info.not_after = NOW - DAY;
        let actions = plan(&state, NOW, &policy());
        assert_eq!(
            kinds(&actions),
            ["warn", "client:issue", "warn", "daemon:issue", "restart"]
        );
    }

    #[test]
    fn force_renew() {
        let mut p = policy();
        p.force = Some(ForceRenew::Leaf);
        let state = stable(NOW - DAY * 100, NOW - DAY * 10);
        assert_eq!(
            kinds(&plan(&state, NOW, &p)),
            ["client:issue", "daemon:issue", "restart"]
        );
        p.force = Some(ForceRenew::Ca);
        assert_eq!(
            kinds(&plan(&state, NOW, &p))[..2],
            ["issue-ca", "write-ca:introduced"]
        );
        // Within the propagation delay of the last write the rollover waits, and says so.
        let young = stable(NOW - DAY * 100, NOW - time::Duration::hours(1));
        assert_eq!(kinds(&plan(&young, NOW, &p)), ["warn"]);
    }

    #[test]
    fn leaves_never_outlive_the_signing_ca() {
        // The CA has 20 days left and the rollover is stuck (rollout never completes).
        let mut state = stable(NOW - DAY * (5 * 365 - 20), NOW - DAY * 80);
        state.workload.as_mut().unwrap().rollout_complete = false;
        let actions = plan(&state, NOW, &policy());
        let Action::WriteLeaf {
            cert: LeafCert::Issue { not_after, .. },
            ..
        } = &actions[0]
        else {
            panic!("{actions:?}")
        };
        assert_eq!(*not_after, NOW - DAY * (5 * 365 - 20) + DAY * (5 * 365));
    }

    #[test]
    fn extreme_dates_never_panic() {
        let far = datetime!(9999-12-31 23:59:59 UTC);
        let mut state = stable(far - DAY * 100, far - DAY * 10);
        leaf_mut(&mut state.client).updated_at = Some(far);
        leaf_mut(&mut state.daemon).info.not_after = far;
        for now in [far, datetime!(1970-01-01 0:00 UTC), far - DAY] {
            let _ = plan(&state, now, &policy());
            let _ = next_action(&state, now, &policy());
        }
        let mut p = policy();
        p.propagation_delay = time::Duration::MAX;
        p.ca_validity = time::Duration::MAX;
        let _ = plan(&state, far, &p);
        let _ = plan(&stable(NOW - DAY * (4 * 365), NOW - DAY * 10), NOW, &p);
    }

    #[test]
    fn next_action_finds_the_renewal_date() {
        let state = stable(NOW - DAY * 100, NOW - DAY * 10);
        let (at, actions) = next_action(&state, NOW, &policy()).unwrap();
        // Leaves born NOW-10d live 90d and renew 30d before the end: at NOW+50d.
        assert!(
            at >= NOW + DAY * 50 && at < NOW + DAY * 50 + time::Duration::minutes(1),
            "{at}"
        );
        assert!(!actions.is_empty());
    }
}
