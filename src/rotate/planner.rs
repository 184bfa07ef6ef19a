//! The pure rotation planner: `plan(state, now, policy) -> Vec<Action>`.
//!
//! One run does at most one step of the CA rollover, and takes a step only once the
//! previous one is complete. Within a step the order is fixed: CA Secret, client Secret,
//! daemon Secret, restart. Each Secret write moves toward a target that is derived from
//! the CA Secret alone, so a crash between any two writes leaves a state whose next plan
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
//! Step 1 (stable → introduced) only adds trust, so it needs no gate: it is taken as soon
//! as the rollover is due, together with any leaf renewal that is due (from A, with the
//! bundle [A, B]). Steps 2 and 3 are gated ([`step_settled`]): the leaf Secrets match the
//! phase, buildkitd was restarted for the daemon Secret and the rollout is over
//! (`restartStrategy: rollout`), every replica was *seen* over TLS serving the current
//! daemon certificate (and, before step 2, accepting a client certificate from B), and
//! the propagation delay has passed since the last leaf-Secret write (every running
//! client loaded the current bundle).
//!
//! A signing CA whose key is lost (or does not match) is rolled over the same way while
//! both leaves are valid and signed by it: nothing in steps 1–3 needs the old key. Only
//! when that is impossible (a leaf expired, broken or from an unknown CA, or the CA
//! certificate itself unusable or expired) does kiln start over with a new CA, which
//! breaks trust until every process uses the new certificates.

use time::OffsetDateTime;

use crate::overlay::RestartStrategy;
use crate::pki::LeafKind;

use std::collections::{BTreeMap, BTreeSet};

use super::state::{CaSecret, Client, Leaf, OtherCa, Phase, Slot, State};

/// How far `not_before` of new certificates is set back, so a node whose clock runs
/// behind (clock skew of minutes) still accepts them.
pub const BACKDATE: time::Duration = time::Duration::hours(1);

/// Beyond this many replicas, messages name the first ones and count the rest.
const NAMED_REPLICAS: usize = 3;

/// What `--force-renew` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForceRenew {
    /// Reissue the daemon and client certificates now.
    Leaf,
    /// Start a CA rollover now (its later phases still wait for their gates).
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

/// How loud a warning is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Something to look at: a repair, a stalled rollover.
    Warning,
    /// Trust breaks until the restarts are through (kiln starts over with a new CA).
    Outage,
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
    /// Write the daemon Secret or a tenant's client Secret.
    WriteLeaf {
        /// Which Secret.
        kind: LeafKind,
        /// The Secret's namespace: the farm's for the daemon, the tenant's for a client.
        namespace: String,
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
    /// Remember the tenants in the CA Secret (see [`super::state::ANN_TENANTS`]), so a
    /// tenant dropped from the overlay is still named in `kiln status`. Runs with the CA
    /// write, or as the first write when the CA does not change.
    RecordTenants {
        /// The tenants and the expiry of their certificates after this run.
        tenants: std::collections::BTreeMap<String, OffsetDateTime>,
        /// The removed tenants whose certificates are still valid.
        removed: std::collections::BTreeMap<String, OffsetDateTime>,
    },
    /// Something an operator must hear about.
    Warn {
        /// The one-line message.
        message: String,
        /// How loud.
        severity: Severity,
    },
}

fn warn(message: impl Into<String>) -> Action {
    Action::Warn {
        message: message.into(),
        severity: Severity::Warning,
    }
}

/// The CA layout a plan converges the leaves to.
struct Target {
    signing: CaRef,
    signing_not_before: OffsetDateTime,
    signing_not_after: OffsetDateTime,
    /// False when the signing CA's key is lost: leaves cannot be issued from it.
    signing_has_key: bool,
    /// (CA, not_before) oldest first.
    bundle: Vec<(CaRef, OffsetDateTime)>,
    /// True while a rollover moves leaves from one CA to the other: a leaf from the
    /// other CA is reissued as a routine step, not as a repair.
    rollover: bool,
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
            signing_has_key: ca.signing.key_pem.is_some(),
            bundle,
            rollover: ca.other.is_some(),
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

    /// True when `leaf` was signed by a CA of this target's bundle.
    fn signed_by_bundle(&self, leaf: &Leaf) -> bool {
        self.bundle
            .iter()
            .any(|(ca, _)| matches!(ca, CaRef::Existing(fp) if leaf.issuer.as_deref() == Some(fp.as_str())))
    }

    fn signing_short(&self) -> String {
        match &self.signing {
            CaRef::New => "new".into(),
            CaRef::Existing(fp) => super::short_hex(fp).to_string(),
        }
    }
}

fn role_name(kind: LeafKind) -> &'static str {
    match kind {
        LeafKind::Daemon => "daemon",
        LeafKind::Client => "client",
    }
}

/// How messages name a leaf Secret: `daemon`, `client` (the farm's) or `tenant team-a client`.
fn leaf_label(kind: LeafKind, client: Option<&Client>) -> String {
    match client {
        Some(client) if !client.farm => format!("tenant {} client", client.namespace),
        _ => role_name(kind).to_string(),
    }
}

/// The leaf Secrets a step needs, in write order: every tenant's client Secret (the
/// farm's first), then the daemon's. Tenants that are not there yet are left out.
fn leaves(state: &State) -> impl Iterator<Item = (&Slot<Leaf>, LeafKind, Option<&Client>)> {
    state
        .clients
        .iter()
        .filter(|c| !c.absent())
        .map(|c| (&c.slot, LeafKind::Client, Some(c)))
        .chain(std::iter::once((&state.daemon, LeafKind::Daemon, None)))
}

/// The farm's namespace: that of the first client Secret.
fn state_namespace(state: &State) -> &str {
    state.clients.first().map_or("", |c| c.namespace.as_str())
}

/// The tenants kiln cannot write this run: not there yet, or held (see [`Client::absent`]).
fn absent_tenants(state: &State) -> impl Iterator<Item = &Client> {
    state.clients.iter().filter(|c| c.absent())
}

/// Decide what to do with one leaf Secret. Returns the action and, for repairs, a warning.
fn leaf_action(
    slot: &Slot<Leaf>,
    kind: LeafKind,
    namespace: &str,
    name: &str,
    target: &Target,
    now: OffsetDateTime,
    policy: &Policy,
) -> (Option<Action>, Option<String>) {
    let not_before = now.saturating_sub(BACKDATE).max(target.signing_not_before);
    let not_after = now
        .saturating_add(policy.leaf_validity)
        .min(target.signing_not_after);
    let issue = |reason: String| Action::WriteLeaf {
        kind,
        namespace: namespace.to_string(),
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
        namespace: namespace.to_string(),
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
        return match &target.signing {
            CaRef::New => (
                Some(issue(format!("issuing the {name} certificate from the new CA"))),
                None,
            ),
            CaRef::Existing(_) if target.rollover && target.signed_by_bundle(leaf) => (
                Some(issue(format!(
                    "CA rollover: issuing the {name} certificate from the new CA {}",
                    target.signing_short()
                ))),
                None,
            ),
            CaRef::Existing(_) => {
                let warning = format!(
                    "the {name} certificate was not signed by any CA in the CA Secret; reissuing it from the signing CA {}",
                    target.signing_short()
                );
                (
                    Some(issue(format!(
                        "repair: the {name} certificate comes from an unknown CA"
                    ))),
                    Some(warning),
                )
            }
        };
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
    // Without the signing key nothing can be reissued; the rollover to a new CA reissues
    // the leaves at its second step (the caller made sure they are still valid).
    let mut reissue = None;
    if policy.force == Some(ForceRenew::Leaf) {
        reissue = Some(format!("--force-renew leaf: reissuing the {name} certificate"));
    } else if left < policy.leaf_renew_before && renewal_helps {
        reissue = Some(format!(
            "renew: the {name} certificate expires in {} days",
            left.whole_days()
        ));
    } else if kind == LeafKind::Daemon {
        let mut have = leaf.sans.clone();
        let mut want = policy.daemon_sans.clone();
        have.sort();
        want.sort();
        if have != want {
            reissue = Some("the daemon certificate's SANs differ from the overlay".into());
        }
    }
    if let Some(reason) = reissue
        && target.signing_has_key
    {
        return (Some(issue(reason)), None);
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
    for (slot, kind, client) in leaves(state) {
        let namespace = client.map_or(state_namespace(state), |c| c.namespace.as_str());
        let name = leaf_label(kind, client);
        let (action, warning) = leaf_action(slot, kind, namespace, &name, target, now, policy);
        if let Some(message) = warning {
            out.push(warn(message));
        }
        if let Some(action) = action {
            daemon_written |= kind == LeafKind::Daemon;
            out.push(action);
        }
    }
    if policy.restart == RestartStrategy::None {
        if daemon_written {
            out.push(warn(
                "restartStrategy is none: restart buildkitd yourself so it loads the new daemon certificate",
            ));
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

/// Names the first few replicas and counts the rest.
fn replica_list(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(NAMED_REPLICAS)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > NAMED_REPLICAS {
        text.push_str(&format!("; and {} more", items.len() - NAMED_REPLICAS));
    }
    text
}

/// Every replica serves the current daemon certificate (and, in phase `introduced`,
/// accepts a client certificate from the next CA). Err names the replicas that hold
/// the rollover back, and why.
pub fn replicas_settled(state: &State, ca: &CaSecret, daemon: &Leaf) -> Result<(), String> {
    let Some(observed) = &state.observed else {
        return Err("the buildkitd replicas were not observed over TLS".into());
    };
    if let Some(error) = &observed.error {
        return Err(format!("the buildkitd replicas cannot be listed: {error}"));
    }
    if observed.replicas.is_empty() {
        return Err("no buildkitd replica was found to connect to".into());
    }
    let next_ca = match &ca.other {
        Some(OtherCa::Next(next)) => Some(next.info.fingerprint.as_str()),
        _ => None,
    };
    let mut holding = Vec::new();
    for replica in &observed.replicas {
        match &replica.result {
            Err(why) => holding.push(format!("{} cannot be reached: {why}", replica.name)),
            Ok(served) if served.fingerprint != daemon.info.fingerprint => holding.push(format!(
                "{} serves daemon certificate {} (expires {}), not the current {}",
                replica.name,
                super::short_hex(&served.serial),
                crate::pki::rfc3339(served.not_after),
                super::short_hex(&daemon.info.serial)
            )),
            Ok(served)
                if next_ca.is_some()
                    && (observed.probe_ca.as_deref() != next_ca || served.probe_accepted != Some(true)) =>
            {
                holding.push(format!(
                    "{} does not accept a client certificate from the next CA",
                    replica.name
                ));
            }
            Ok(_) => {}
        }
    }
    if observed.replicas.len() < observed.expected {
        holding.push(format!(
            "only {} of {} replicas were found",
            observed.replicas.len(),
            observed.expected
        ));
    }
    if holding.is_empty() {
        Ok(())
    } else {
        Err(format!("waiting for buildkitd: {}", replica_list(&holding)))
    }
}

/// True when the Secrets match the current phase, the restart happened and the rollout
/// is over, every replica serves what the phase expects, and the propagation delay has
/// passed since the last leaf write.
fn step_settled(state: &State, ca: &CaSecret, now: OffsetDateTime, policy: &Policy) -> Result<(), String> {
    if let Some(tenant) = absent_tenants(state).next() {
        let ns = &tenant.namespace;
        return Err(match &tenant.held {
            Some(_) => format!(
                "waiting for the client Secret of tenant {ns} to match the policy before the CA rollover can go on (its clients would lose trust)"
            ),
            None => format!(
                "waiting for tenant namespace {ns} to exist before the CA rollover can go on (its clients would lose trust)"
            ),
        });
    }
    let Slot::Ok(daemon) = &state.daemon else {
        return Err("the leaf Secrets are not complete".into());
    };
    let mut last_write = daemon.updated_at;
    for (slot, _, _) in leaves(state) {
        let Slot::Ok(leaf) = slot else {
            return Err("the leaf Secrets are not complete".into());
        };
        last_write = match (last_write, leaf.updated_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
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
    let Some(last_write) = last_write else {
        return Err("the leaf Secrets have no kiln.dev/updated-at".into());
    };
    let ready_at = last_write.saturating_add(policy.propagation_delay);
    if now < ready_at {
        return Err(format!(
            "waiting for the propagation delay until {}",
            crate::pki::rfc3339(ready_at)
        ));
    }
    replicas_settled(state, ca, daemon)
}

/// During a rollover: what its next step waits for (None when nothing holds it back, or
/// when there is no rollover).
pub fn waiting_for(state: &State, now: OffsetDateTime, policy: &Policy) -> Option<String> {
    let ca = state.ca.ok()?;
    if ca.phase() == Phase::Stable {
        return None;
    }
    step_settled(state, ca, now, policy).err()
}

/// True when a run should look at the replicas over TLS before planning: a rollover step
/// is in progress or due. Renewals never wait for it.
pub fn wants_observation(state: &State, now: OffsetDateTime, policy: &Policy) -> bool {
    match state.ca.ok() {
        Some(ca) => ca.phase() != Phase::Stable || rollover_due(ca, now, policy).is_some(),
        None => false,
    }
}

/// Why a stable CA should be rolled over now, if it should.
fn rollover_due(ca: &CaSecret, now: OffsetDateTime, policy: &Policy) -> Option<String> {
    let left = ca.signing.info.not_after - now;
    if let Some(problem) = &ca.key_problem {
        Some(format!(
            "CA rollover: the CA key is unusable ({problem}); introducing a new CA beside the old certificate, which stays trusted until every leaf is reissued (no outage)"
        ))
    } else if left < policy.ca_renew_before {
        Some(format!(
            "CA rollover: the CA expires in {} days; introducing the next CA",
            left.whole_days()
        ))
    } else if policy.force == Some(ForceRenew::Ca) {
        Some("CA rollover (--force-renew ca): introducing the next CA".into())
    } else {
        None
    }
}

/// Can the leaves be carried to a new CA without the signing CA's key? They must be
/// valid and signed by a CA every bundle will keep trusting. Err says why not.
fn keyless_viable(state: &State, target: &Target, now: OffsetDateTime) -> Result<(), String> {
    for (slot, kind, client) in leaves(state) {
        let name = leaf_label(kind, client);
        let leaf = match slot {
            Slot::Ok(leaf) => leaf,
            Slot::Missing | Slot::Empty => return Err(format!("the {name} Secret is empty")),
            Slot::Broken(why) => return Err(format!("the {name} Secret is broken ({why})")),
        };
        if leaf.info.not_after <= now {
            return Err(format!(
                "the {name} certificate expired at {}",
                crate::pki::rfc3339(leaf.info.not_after)
            ));
        }
        if !target.signed_by_bundle(leaf) {
            return Err(format!("the {name} certificate comes from an unknown CA"));
        }
        if !target.signing_has_key && !target.signed_by_signing(leaf) {
            return Err(format!(
                "the {name} certificate is not signed by the signing CA, whose key is lost"
            ));
        }
    }
    Ok(())
}

const START_OVER: &str = "starting over with a new CA: clients and daemons do not trust each other until both use the new certificates (an outage of builds until the restart has rolled through)";

/// Plan one run. Pure: the same state, time and policy give the same actions.
pub fn plan(state: &State, now: OffsetDateTime, policy: &Policy) -> Vec<Action> {
    let mut out: Vec<Action> = absent_tenants(state)
        .map(|tenant| {
            let ns = &tenant.namespace;
            warn(match &tenant.held {
                Some(why) => format!(
                    "tenant {ns}: its client Secret does not match the policy, so kiln leaves it alone: {why}; fix the Secret (or the policy), and until then it is not renewed and a CA rollover step waits for it"
                ),
                None if state.record.tenants.contains_key(ns) => format!(
                    "tenant {ns}: kiln renewed its client Secret before but cannot read it now (the Secret or the Role {} there was deleted); it is not renewed until they are back, and a CA rollover step waits for it",
                    crate::overlay::tenant_rbac_name(state_namespace(state))
                ),
                None => format!(
                    "tenant {ns}: its client Secret cannot be read (the namespace, the Secret or the Role {} there does not exist yet); it is filled once they exist, and a CA rollover step waits for it",
                    crate::overlay::tenant_rbac_name(state_namespace(state))
                ),
            })
        })
        .collect();
    out.extend(plan_steps(state, now, policy));
    if let Some(record) = record_tenants(state, &out, now) {
        // With the CA write when there is one, else before the first write: the record
        // names the expiry a tenant will have before its Secret gets it, so a crash in
        // between overstates the exposure of a removed tenant, never understates it.
        let at = out
            .iter()
            .rposition(|a| matches!(a, Action::WriteCa { .. }))
            .map(|i| i + 1)
            .or_else(|| {
                out.iter()
                    .position(|a| matches!(a, Action::WriteLeaf { .. } | Action::Restart { .. }))
            })
            .unwrap_or(out.len());
        out.insert(at, record);
    }
    out
}

/// The [`Action::RecordTenants`] this run needs, when the record in the CA Secret differs
/// from what the run leaves behind.
fn record_tenants(state: &State, actions: &[Action], now: OffsetDateTime) -> Option<Action> {
    let writes_ca = actions.iter().any(|a| matches!(a, Action::WriteCa { .. }));
    if state.ca.ok().is_none() && !writes_ca {
        return None;
    }
    let planned = |namespace: &str| {
        actions.iter().find_map(|a| match a {
            Action::WriteLeaf {
                kind: LeafKind::Client,
                namespace: ns,
                cert: LeafCert::Issue { not_after, .. },
                ..
            } if ns == namespace => Some(*not_after),
            _ => None,
        })
    };
    let record = &state.record;
    let mut tenants = BTreeMap::new();
    for client in state.clients.iter().filter(|c| !c.farm) {
        let ns = client.namespace.as_str();
        let expiry = planned(ns)
            .or_else(|| client.slot.ok().map(|l| l.info.not_after))
            .or_else(|| record.tenants.get(ns).copied())
            .or_else(|| record.removed.get(ns).copied());
        if let Some(expiry) = expiry {
            tenants.insert(ns.to_string(), expiry);
        }
    }
    let current: BTreeSet<&str> = state.clients.iter().map(|c| c.namespace.as_str()).collect();
    let mut removed: BTreeMap<String, OffsetDateTime> = BTreeMap::new();
    for (ns, at) in record.tenants.iter().chain(&record.removed) {
        if !current.contains(ns.as_str()) && *at > now {
            let entry = removed.entry(ns.clone()).or_insert(*at);
            *entry = (*entry).max(*at);
        }
    }
    (tenants != record.tenants || removed != record.removed)
        .then_some(Action::RecordTenants { tenants, removed })
}

fn plan_steps(state: &State, now: OffsetDateTime, policy: &Policy) -> Vec<Action> {
    let mut out: Vec<Action> = state.warnings.iter().map(warn).collect();
    let new_ca_not_before = now.saturating_sub(BACKDATE);
    let new_ca_not_after = now.saturating_add(policy.ca_validity);
    let start_over = |out: &mut Vec<Action>, reason: String, alarm: Option<String>| {
        if let Some(why) = alarm {
            out.push(Action::Warn {
                message: format!("{why}; {START_OVER}"),
                severity: Severity::Outage,
            });
        }
        if policy.force == Some(ForceRenew::Ca) {
            out.push(warn(
                "--force-renew ca: a new CA is created in this run anyway; there is nothing to roll over",
            ));
        }
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
        let target = Target {
            signing: CaRef::New,
            signing_not_before: new_ca_not_before,
            signing_not_after: new_ca_not_after,
            signing_has_key: true,
            bundle: vec![(CaRef::New, new_ca_not_before)],
            rollover: false,
        };
        converge(state, &target, now, policy, out);
    };

    let ca = match &state.ca {
        Slot::Missing | Slot::Empty => {
            let has_leaves =
                state.daemon.ok().is_some() || state.clients.iter().any(|c| c.slot.ok().is_some());
            let alarm = has_leaves.then(|| {
                "the CA Secret is empty but the leaf Secrets hold certificates: the CA is lost".to_string()
            });
            start_over(&mut out, "bootstrap: no CA yet".into(), alarm);
            return out;
        }
        Slot::Broken(why) => {
            start_over(
                &mut out,
                format!("repair: {why}"),
                Some(format!("the CA Secret is unusable ({why})")),
            );
            return out;
        }
        Slot::Ok(ca) => ca,
    };
    if ca.signing.info.not_after <= now {
        start_over(
            &mut out,
            "repair: expired CA".into(),
            Some(format!(
                "the signing CA expired at {}",
                crate::pki::rfc3339(ca.signing.info.not_after)
            )),
        );
        return out;
    }

    let current = Target::from_ca(ca);
    if let Some(problem) = &ca.key_problem
        && let Err(why) = keyless_viable(state, &current, now)
    {
        start_over(
            &mut out,
            format!("repair: {problem}"),
            Some(format!(
                "the CA key is unusable ({problem}) and a rollover without it is impossible: {why}"
            )),
        );
        return out;
    }
    if ca.key_problem.is_some() && policy.force == Some(ForceRenew::Leaf) {
        out.push(warn(
            "--force-renew leaf: the signing CA's key is lost, so nothing can be issued from it; the rollover to a new CA reissues the leaves",
        ));
    }

    if ca.phase() == Phase::Stable
        && let Some(reason) = rollover_due(ca, now, policy)
    {
        // Step 1 only adds trust: take it now, with any renewal that is due.
        if ca.key_problem.is_some() {
            out.push(warn(reason.trim_start_matches("CA rollover: ").to_string()));
        }
        out.push(Action::IssueCa {
            not_before: new_ca_not_before,
            not_after: new_ca_not_after,
        });
        out.push(Action::WriteCa {
            signing: CaRef::Existing(ca.signing.info.fingerprint.clone()),
            other: Some((OtherRole::Next, CaRef::New)),
            phase: Phase::Introduced,
            reason,
        });
        let mut bundle = current.bundle.clone();
        bundle.push((CaRef::New, new_ca_not_before));
        let next = Target {
            bundle,
            rollover: false,
            ..current
        };
        converge(state, &next, now, policy, &mut out);
        return out;
    }

    let before = out.len();
    converge(state, &current, now, policy, &mut out);
    let unfinished = out[before..]
        .iter()
        .any(|a| matches!(a, Action::WriteLeaf { .. } | Action::Restart { .. }));
    if ca.phase() == Phase::Stable {
        return out;
    }
    let since = ca
        .phase_since
        .map(|t| format!(" since {}", crate::pki::rfc3339(t)))
        .unwrap_or_default();
    if unfinished {
        if policy.force == Some(ForceRenew::Ca) {
            out.push(warn(format!(
                "--force-renew ca: a CA rollover is already in progress (phase {}{since}); this run finishes its current step",
                ca.phase()
            )));
        }
        return out;
    }
    if let Err(why) = step_settled(state, ca, now, policy) {
        if policy.force == Some(ForceRenew::Ca) {
            out.push(warn(format!(
                "--force-renew ca: a CA rollover is already in progress (phase {}{since}); its next step waits: {why}",
                ca.phase()
            )));
        }
        let ca_left = ca.signing.info.not_after - now;
        let stalled = ca
            .phase_since
            .is_some_and(|t| now >= t.saturating_add(policy.propagation_delay.saturating_mul(2)));
        if ca_left < policy.propagation_delay.saturating_mul(2) {
            out.push(warn(format!(
                "the signing CA expires at {} and the rollover (phase {}) cannot proceed: {why}",
                crate::pki::rfc3339(ca.signing.info.not_after),
                ca.phase()
            )));
        } else if stalled {
            out.push(warn(format!(
                "the CA rollover has been in phase {}{since}, more than twice rotation.propagationDelay: {why}",
                ca.phase()
            )));
        }
        return out;
    }
    let signing_fp = ca.signing.info.fingerprint.clone();
    let next = match &ca.other {
        Some(OtherCa::Next(next)) => {
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
                signing_has_key: next.key_pem.is_some(),
                bundle: current.bundle,
                rollover: true,
            }
        }
        Some(OtherCa::Retiring(_)) => {
            out.push(Action::WriteCa {
                signing: CaRef::Existing(signing_fp.clone()),
                other: None,
                phase: Phase::Stable,
                reason: "CA rollover: every client and daemon uses the new CA; retiring the old one".into(),
            });
            Target {
                bundle: vec![(CaRef::Existing(signing_fp), ca.signing.info.not_before)],
                rollover: false,
                ..current
            }
        }
        None => return out,
    };
    converge(state, &next, now, policy, &mut out);
    out
}

/// The next time `plan` would do something, searching the dates where something can
/// change (renewal windows, the CA window, the propagation delay).
pub fn next_action(
    state: &State,
    now: OffsetDateTime,
    policy: &Policy,
) -> Option<(OffsetDateTime, Vec<Action>)> {
    let mut candidates = vec![now];
    for leaf in leaves(state).filter_map(|(slot, _, _)| slot.ok()) {
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
            .filter(|a| !matches!(a, Action::Warn { .. } | Action::RecordTenants { .. }))
            .collect();
        (!actions.is_empty()).then_some((at, actions))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotate::state::{Ca, CertInfo, KeyPem, Observed, ReplicaObservation, Served, Workload};
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

    fn ca_secret(signing: Ca, other: Option<OtherCa>, since: Option<OffsetDateTime>) -> Slot<CaSecret> {
        Slot::Ok(CaSecret {
            signing,
            other,
            phase_since: since,
            key_problem: None,
        })
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

    const SANS: &[&str] = &["buildkitd", "buildkitd.ns"];

    fn farm(slot: Slot<Leaf>) -> Vec<Client> {
        vec![Client {
            namespace: "buildkit".into(),
            slot,
            farm: true,
            held: None,
        }]
    }

    /// A settled stable state: CA "A" born `ca_born`, leaves born `leaf_born`, rollout done.
    fn stable(ca_born: OffsetDateTime, leaf_born: OffsetDateTime) -> State {
        let daemon = leaf("d1", "A", &["A"], leaf_born, SANS);
        let workload = Workload {
            daemon_certs: Some(daemon.version()),
            rollout_complete: true,
            replicas: 2,
        };
        State {
            ca: ca_secret(ca("A", ca_born), None, None),
            daemon: Slot::Ok(daemon),
            clients: farm(Slot::Ok(leaf("c1", "A", &["A"], leaf_born, &[]))),
            record: Default::default(),
            workload: Some(workload),
            warnings: Vec::new(),
            observed: None,
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
                    role_name(*kind),
                    if *cert == LeafCert::Keep { "keep" } else { "issue" }
                ),
                Action::Restart { .. } => "restart".into(),
                Action::RecordTenants { .. } => "record".into(),
                Action::Warn {
                    severity: Severity::Outage,
                    ..
                } => "OUTAGE".into(),
                Action::Warn { .. } => "warn".into(),
            })
            .collect()
    }

    fn warnings(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Warn { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn leaf_mut(slot: &mut Slot<Leaf>) -> &mut Leaf {
        match slot {
            Slot::Ok(leaf) => leaf,
            _ => panic!("not a leaf"),
        }
    }

    fn ca_mut(state: &mut State) -> &mut CaSecret {
        match &mut state.ca {
            Slot::Ok(ca) => ca,
            _ => panic!("no CA"),
        }
    }

    /// Mark the daemons as restarted and rolled out for the current daemon Secret.
    fn rolled_out(state: &mut State) {
        let version = state.daemon.ok().map(Leaf::version);
        state.workload = Some(Workload {
            daemon_certs: version,
            rollout_complete: true,
            replicas: 2,
        });
    }

    /// Both replicas seen serving the current daemon certificate; `probe_ca` signed the
    /// probe, which they accept when `accepts`.
    fn observed(state: &mut State, probe_ca: &str, accepts: bool) {
        let daemon = state.daemon.ok().expect("daemon").info.clone();
        state.observed = Some(Observed {
            probe_ca: Some(probe_ca.into()),
            replicas: (0..2)
                .map(|i| ReplicaObservation {
                    name: format!("buildkitd-{i}"),
                    result: Ok(Served {
                        fingerprint: daemon.fingerprint.clone(),
                        serial: daemon.serial.clone(),
                        not_after: daemon.not_after,
                        issuer: None,
                        probe_accepted: Some(accepts),
                    }),
                })
                .collect(),
            expected: 2,
            error: None,
        });
    }

    #[test]
    fn bootstrap_from_nothing_writes_ca_then_client_then_daemon_then_restarts() {
        let state = State {
            ca: Slot::Missing,
            daemon: Slot::Empty,
            clients: farm(Slot::Missing),
            record: Default::default(),
            workload: Some(Workload {
                daemon_certs: None,
                rollout_complete: true,
                replicas: 1,
            }),
            warnings: Vec::new(),
            observed: None,
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
        assert!(!wants_observation(&state, NOW, &policy()));
    }

    #[test]
    fn settled_fresh_state_plans_nothing_and_is_deterministic() {
        let state = stable(NOW - DAY * 100, NOW - DAY * 10);
        assert!(plan(&state, NOW, &policy()).is_empty());
        assert_eq!(plan(&state, NOW, &policy()), plan(&state, NOW, &policy()));
        assert!(!wants_observation(&state, NOW, &policy()));
    }

    #[test]
    fn client_in_renew_window_is_renewed_without_restart() {
        let mut state = stable(NOW - DAY * 100, NOW - DAY * 10);
        leaf_mut(&mut state.clients[0].slot).info.not_after = NOW + DAY * 29;
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
        state.workload.as_mut().unwrap().daemon_certs = Some("stale".into());
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
        assert!(wants_observation(&state, NOW, &p));
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
        state.ca = ca_secret(
            ca("A", NOW - DAY * (4 * 365)),
            Some(OtherCa::Next(ca("B", t1 - BACKDATE))),
            Some(t1),
        );
        for slot in [&mut state.clients[0].slot, &mut state.daemon] {
            let l = leaf_mut(slot);
            l.bundle = vec!["A".into(), "B".into()];
            l.updated_at = Some(t1);
        }
        // Not restarted yet: only the restart.
        assert_eq!(kinds(&plan(&state, t1 + DAY * 3, &p)), ["restart"]);
        rolled_out(&mut state);
        // Rolled out, but the propagation delay has not passed.
        observed(&mut state, "B", true);
        assert!(plan(&state, t1 + DAY, &p).is_empty());
        // Rollout incomplete: wait even after the delay.
        state.workload.as_mut().unwrap().rollout_complete = false;
        assert!(plan(&state, t1 + DAY * 3, &p).is_empty());
        state.workload.as_mut().unwrap().rollout_complete = true;
        // Not observed, or a replica does not accept the next CA's clients yet: wait.
        state.observed = None;
        assert!(plan(&state, t1 + DAY * 3, &p).is_empty());
        observed(&mut state, "B", false);
        assert!(plan(&state, t1 + DAY * 3, &p).is_empty());
        observed(&mut state, "A", true);
        assert!(
            plan(&state, t1 + DAY * 3, &p).is_empty(),
            "a probe from the old CA proves nothing"
        );
        observed(&mut state, "B", true);

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
        let Action::WriteLeaf {
            bundle, cert, reason, ..
        } = &step2[1]
        else {
            panic!()
        };
        assert_eq!(
            bundle,
            &vec![CaRef::Existing("A".into()), CaRef::Existing("B".into())]
        );
        assert!(matches!(cert, LeafCert::Issue { signer: CaRef::Existing(fp), .. } if fp == "B"));
        // A routine step reads as one.
        assert_eq!(
            reason,
            "CA rollover: issuing the client certificate from the new CA B"
        );

        // After step 2.
        state.ca = ca_secret(
            ca("B", t1 - BACKDATE),
            Some(OtherCa::Retiring(ca("A", NOW - DAY * (4 * 365)))),
            Some(t2),
        );
        state.clients[0].slot = Slot::Ok(leaf("c2", "B", &["A", "B"], t2, &[]));
        state.daemon = Slot::Ok(leaf("d2", "B", &["A", "B"], t2, SANS));
        rolled_out(&mut state);
        // The replicas still serve the old daemon certificate: wait, and say which.
        let old = state.observed.clone();
        state.observed = old;
        assert!(plan(&state, t2 + DAY * 3, &p).is_empty());
        observed(&mut state, "B", true);
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
    fn the_replicas_that_hold_a_rollover_back_are_named() {
        let mut state = stable(NOW - DAY * (4 * 365), NOW - DAY * 10);
        state.ca = ca_secret(
            ca("A", NOW - DAY * (4 * 365)),
            Some(OtherCa::Next(ca("B", NOW - DAY * 5))),
            Some(NOW - DAY * 5),
        );
        for slot in [&mut state.clients[0].slot, &mut state.daemon] {
            let l = leaf_mut(slot);
            l.bundle = vec!["A".into(), "B".into()];
            l.updated_at = Some(NOW - DAY * 5);
        }
        rolled_out(&mut state);
        observed(&mut state, "B", true);
        let observed_state = state.observed.as_mut().unwrap();
        observed_state.replicas[0].result = Err("cannot connect to 10.0.0.7:1234: connection refused".into());
        if let Ok(served) = &mut observed_state.replicas[1].result {
            served.fingerprint = "old".into();
            served.serial = "0123456789abcdef0123".into();
        }
        let (ca, daemon) = (state.ca.ok().unwrap(), state.daemon.ok().unwrap());
        let why = replicas_settled(&state, ca, daemon).unwrap_err();
        assert!(
            why.starts_with(
                "waiting for buildkitd: buildkitd-0 cannot be reached: cannot connect to 10.0.0.7:1234"
            ),
            "{why}"
        );
        assert!(
            why.contains("buildkitd-1 serves daemon certificate 0123456789abcdef"),
            "{why}"
        );
        // Five days in phase introduced with a 2-day delay: the stall is warned about.
        let actions = plan(&state, NOW, &policy());
        assert_eq!(kinds(&actions), ["warn"]);
        let message = &warnings(&actions)[0];
        assert!(
            message.starts_with("the CA rollover has been in phase introduced since 2030-05-27T03:17:00Z, more than twice rotation.propagationDelay: waiting for buildkitd: buildkitd-0"),
            "{message}"
        );
        // Nothing reachable at all: still waiting, never advancing blindly.
        state.observed.as_mut().unwrap().replicas.clear();
        let (ca, daemon) = (state.ca.ok().unwrap(), state.daemon.ok().unwrap());
        assert_eq!(
            replicas_settled(&state, ca, daemon).unwrap_err(),
            "no buildkitd replica was found to connect to"
        );
        // A replica missing from the list holds it back too.
        observed(&mut state, "B", true);
        state.observed.as_mut().unwrap().expected = 3;
        let (ca, daemon) = (state.ca.ok().unwrap(), state.daemon.ok().unwrap());
        assert!(
            replicas_settled(&state, ca, daemon)
                .unwrap_err()
                .contains("only 2 of 3 replicas were found")
        );
    }

    #[test]
    fn restart_strategy_none_gates_on_observation_alone() {
        let mut p = policy();
        p.restart = RestartStrategy::None;
        let mut state = stable(NOW - DAY * (4 * 365), NOW - DAY * 10);
        state.ca = ca_secret(
            ca("A", NOW - DAY * (4 * 365)),
            Some(OtherCa::Next(ca("B", NOW - DAY * 3))),
            Some(NOW - DAY * 3),
        );
        for slot in [&mut state.clients[0].slot, &mut state.daemon] {
            let l = leaf_mut(slot);
            l.bundle = vec!["A".into(), "B".into()];
            l.updated_at = Some(NOW - DAY * 3);
        }
        // Nobody restarted the daemons: the template says nothing, which does not matter;
        // what the replicas accept does.
        state.workload = None;
        observed(&mut state, "B", false);
        assert!(plan(&state, NOW, &p).is_empty());
        observed(&mut state, "B", true);
        assert_eq!(
            kinds(&plan(&state, NOW, &p))[..3],
            ["write-ca:leaves-reissued", "client:issue", "daemon:issue"]
        );
    }

    #[test]
    fn crash_after_the_ca_write_is_finished_by_the_next_run() {
        let mut state = stable(NOW - DAY * (4 * 365), NOW - DAY * 10);
        state.ca = ca_secret(
            ca("A", NOW - DAY * (4 * 365)),
            Some(OtherCa::Next(ca("B", NOW))),
            Some(NOW),
        );
        // The bundles still say [A]: finish step 1, do not start step 2.
        assert_eq!(
            kinds(&plan(&state, NOW + DAY * 5, &policy())),
            ["client:keep", "daemon:keep", "restart"]
        );
    }

    #[test]
    fn a_lost_ca_key_rolls_over_while_the_leaves_are_valid() {
        let mut state = stable(NOW - DAY * 100, NOW - DAY * 70);
        ca_mut(&mut state).signing.key_pem = None;
        ca_mut(&mut state).key_problem = Some("key ca.key is missing: the CA key is lost".into());
        let actions = plan(&state, NOW, &policy());
        // The leaves are due for renewal (20 days left) but nothing can sign them: they
        // are kept, with the new CA beside the old one in their bundles.
        assert_eq!(
            kinds(&actions),
            [
                "warn",
                "issue-ca",
                "write-ca:introduced",
                "client:keep",
                "daemon:keep",
                "restart"
            ]
        );
        assert!(
            warnings(&actions)[0].starts_with(
                "the CA key is unusable (key ca.key is missing: the CA key is lost); introducing a new CA"
            ),
            "{:?}",
            warnings(&actions)
        );
        let Action::WriteCa { signing, .. } = &actions[2] else {
            panic!()
        };
        assert_eq!(signing, &CaRef::Existing("A".into()));

        // In phase introduced the keyless CA still signs nothing; step 2 issues from B.
        state.ca = Slot::Ok(CaSecret {
            signing: Ca {
                key_pem: None,
                ..ca("A", NOW - DAY * 100)
            },
            other: Some(OtherCa::Next(ca("B", NOW))),
            phase_since: Some(NOW),
            key_problem: Some("key ca.key is missing: the CA key is lost".into()),
        });
        for slot in [&mut state.clients[0].slot, &mut state.daemon] {
            let l = leaf_mut(slot);
            l.bundle = vec!["A".into(), "B".into()];
            l.updated_at = Some(NOW);
        }
        rolled_out(&mut state);
        observed(&mut state, "B", true);
        assert!(plan(&state, NOW + DAY, &policy()).is_empty());
        assert_eq!(
            kinds(&plan(&state, NOW + DAY * 3, &policy())),
            [
                "write-ca:leaves-reissued",
                "client:issue",
                "daemon:issue",
                "restart"
            ]
        );
    }

    #[test]
    fn a_lost_ca_key_with_expired_leaves_starts_over_loudly() {
        let mut state = stable(NOW - DAY * 200, NOW - DAY * 100);
        ca_mut(&mut state).signing.key_pem = None;
        ca_mut(&mut state).key_problem = Some("key ca.key is missing: the CA key is lost".into());
        let actions = plan(&state, NOW, &policy());
        assert_eq!(
            kinds(&actions),
            [
                "OUTAGE",
                "issue-ca",
                "write-ca:stable",
                "client:issue",
                "daemon:issue",
                "restart"
            ]
        );
        let message = &warnings(&actions)[0];
        assert!(
            message.contains("a rollover without it is impossible: the client certificate expired at"),
            "{message}"
        );
        assert!(message.contains("starting over with a new CA"), "{message}");
    }

    #[test]
    fn broken_or_expired_ca_starts_over_loudly() {
        let mut state = stable(NOW - DAY * 100, NOW - DAY * 10);
        state.ca = Slot::Broken("key ca.crt: no certificate".into());
        let actions = plan(&state, NOW, &policy());
        assert_eq!(
            kinds(&actions),
            [
                "OUTAGE",
                "issue-ca",
                "write-ca:stable",
                "client:issue",
                "daemon:issue",
                "restart"
            ]
        );
        assert!(warnings(&actions)[0].contains("starting over with a new CA"));
        let state = stable(NOW - DAY * (6 * 365), NOW - DAY * 10);
        assert_eq!(kinds(&plan(&state, NOW, &policy()))[..2], ["OUTAGE", "issue-ca"]);
    }

    #[test]
    fn broken_and_expired_leaves_are_repaired_with_a_warning() {
        let mut state = stable(NOW - DAY * 100, NOW - DAY * 10);
        state.clients[0].slot = Slot::Broken("key cert.pem: failed to read PEM block 1".into());
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
        // Right after a leaf write the rollover starts anyway: adding trust is safe.
        let young = stable(NOW - DAY * 100, NOW - time::Duration::hours(1));
        assert_eq!(
            kinds(&plan(&young, NOW, &p)),
            [
                "issue-ca",
                "write-ca:introduced",
                "client:keep",
                "daemon:keep",
                "restart"
            ]
        );
        // Leaves due at the same time: renewed (from the current CA) in the same step.
        let due = stable(NOW - DAY * 100, NOW - DAY * 61);
        let actions = plan(&due, NOW, &p);
        assert_eq!(
            kinds(&actions),
            [
                "issue-ca",
                "write-ca:introduced",
                "client:issue",
                "daemon:issue",
                "restart"
            ]
        );
        let Action::WriteLeaf { bundle, cert, .. } = &actions[2] else {
            panic!()
        };
        assert_eq!(bundle, &vec![CaRef::Existing("A".into()), CaRef::New]);
        assert!(matches!(cert, LeafCert::Issue { signer: CaRef::Existing(fp), .. } if fp == "A"));
        // A rollover in progress: one line says which phase and what it waits for.
        let mut busy = stable(NOW - DAY * 100, NOW - DAY);
        busy.ca = ca_secret(
            ca("A", NOW - DAY * 100),
            Some(OtherCa::Next(ca("B", NOW - DAY))),
            Some(NOW - DAY),
        );
        for slot in [&mut busy.clients[0].slot, &mut busy.daemon] {
            leaf_mut(slot).bundle = vec!["A".into(), "B".into()];
        }
        rolled_out(&mut busy);
        let actions = plan(&busy, NOW, &p);
        assert_eq!(kinds(&actions), ["warn"]);
        assert_eq!(
            warnings(&actions)[0],
            "--force-renew ca: a CA rollover is already in progress (phase introduced since 2030-05-31T03:17:00Z); its next step waits: waiting for the propagation delay until 2030-06-02T03:17:00Z"
        );
    }

    #[test]
    fn leaves_never_outlive_the_signing_ca() {
        // The CA has 20 days left (a rollover starts) and the leaves are due.
        let state = stable(NOW - DAY * (5 * 365 - 20), NOW - DAY * 80);
        let actions = plan(&state, NOW, &policy());
        let not_after = actions
            .iter()
            .find_map(|a| match a {
                Action::WriteLeaf {
                    cert: LeafCert::Issue { not_after, .. },
                    ..
                } => Some(*not_after),
                _ => None,
            })
            .expect("a leaf issued");
        assert_eq!(not_after, NOW - DAY * (5 * 365 - 20) + DAY * (5 * 365));
    }

    #[test]
    fn extreme_dates_never_panic() {
        let far = datetime!(9999-12-31 23:59:59 UTC);
        let mut state = stable(far - DAY * 100, far - DAY * 10);
        leaf_mut(&mut state.clients[0].slot).updated_at = Some(far);
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

    fn tenant(ns: &str, slot: Slot<Leaf>) -> Client {
        Client {
            namespace: ns.into(),
            slot,
            farm: false,
            held: None,
        }
    }

    fn with_tenants(mut state: State, born: OffsetDateTime) -> State {
        for ns in ["team-a", "team-b", "team-c"] {
            state.clients.push(tenant(
                ns,
                Slot::Ok(leaf(&format!("c-{ns}"), "A", &["A"], born, &[])),
            ));
        }
        state
    }

    fn namespaces(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::WriteLeaf { namespace, kind, .. } => {
                    Some(format!("{}:{namespace}", role_name(*kind)))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_tenant_renews_in_order_and_a_partial_run_is_finished() {
        let born = NOW - DAY * 61;
        let state = with_tenants(stable(NOW - DAY * 100, born), born);
        let actions = plan(&state, NOW, &policy());
        assert_eq!(
            namespaces(&actions),
            [
                "client:buildkit",
                "client:team-a",
                "client:team-b",
                "client:team-c",
                "daemon:buildkit"
            ]
        );
        // The record comes before the first leaf write and names every tenant's new expiry.
        assert!(matches!(&actions[0], Action::RecordTenants { tenants, removed }
            if tenants.len() == 3 && tenants["team-b"] == NOW + DAY * 90 && removed.is_empty()));
        // A crash after team-a was written: the rerun writes only what is left.
        let mut partial = state.clone();
        for i in 0..2 {
            partial.clients[i].slot = Slot::Ok(leaf(&format!("new{i}"), "A", &["A"], NOW, &[]));
        }
        let Action::RecordTenants { tenants, removed } = &actions[0] else {
            panic!()
        };
        partial.record.tenants = tenants.clone();
        partial.record.removed = removed.clone();
        partial.record.tenants.insert("team-a".into(), NOW + DAY * 90);
        let rerun = plan(&partial, NOW, &policy());
        assert_eq!(
            namespaces(&rerun),
            ["client:team-b", "client:team-c", "daemon:buildkit"],
            "{:?}",
            kinds(&rerun)
        );
        assert!(
            !kinds(&rerun).contains(&"record".to_string()),
            "{:?}",
            kinds(&rerun)
        );
    }

    #[test]
    fn an_absent_tenant_warns_never_blocks_renewals_but_holds_a_rollover_step() {
        let born = NOW - DAY * 61;
        let mut state = with_tenants(stable(NOW - DAY * 100, born), born);
        state.clients[3].slot = Slot::Missing;
        let actions = plan(&state, NOW, &policy());
        assert_eq!(
            namespaces(&actions),
            [
                "client:buildkit",
                "client:team-a",
                "client:team-b",
                "daemon:buildkit"
            ]
        );
        assert!(warnings(&actions)[0].starts_with("tenant team-c: its client Secret cannot be read"));

        // In phase introduced, with everything else settled, step 2 waits for team-c.
        let t1 = NOW - DAY * 3;
        state.ca = ca_secret(
            ca("A", NOW - DAY * (4 * 365)),
            Some(OtherCa::Next(ca("B", t1))),
            Some(t1),
        );
        for client in state.clients.iter_mut().filter(|c| !c.absent()) {
            let l = leaf_mut(&mut client.slot);
            l.bundle = vec!["A".into(), "B".into()];
            l.updated_at = Some(t1);
            l.info.not_after = NOW + DAY * 80;
        }
        let d = leaf_mut(&mut state.daemon);
        d.bundle = vec!["A".into(), "B".into()];
        d.updated_at = Some(t1);
        d.info.not_after = NOW + DAY * 80;
        rolled_out(&mut state);
        observed(&mut state, "B", true);
        let held = plan(&state, NOW, &policy());
        assert!(
            !kinds(&held).iter().any(|k| k.starts_with("write-ca")),
            "{:?}",
            kinds(&held)
        );
        assert_eq!(
            waiting_for(&state, NOW, &policy()).unwrap(),
            "waiting for tenant namespace team-c to exist before the CA rollover can go on (its clients would lose trust)"
        );
        // team-c appears (the rendered shell): it is filled with the phase's bundle first,
        // and the step waits for the propagation delay after that write.
        state.clients[3].slot = Slot::Empty;
        let fill = plan(&state, NOW, &policy());
        assert_eq!(namespaces(&fill), ["client:team-c"], "{:?}", kinds(&fill));
        let Some(Action::WriteLeaf { bundle, .. }) =
            fill.iter().find(|a| matches!(a, Action::WriteLeaf { .. }))
        else {
            panic!()
        };
        assert_eq!(bundle.len(), 2);
        state.clients[3].slot = Slot::Ok(leaf("c-team-c", "A", &["A", "B"], NOW, &[]));
        assert!(
            waiting_for(&state, NOW + DAY, &policy())
                .unwrap()
                .contains("propagation delay")
        );
        assert!(waiting_for(&state, NOW + DAY * 2, &policy()).is_none());
    }

    #[test]
    fn a_removed_tenant_is_remembered_until_its_certificate_expires() {
        let born = NOW - DAY * 10;
        let mut state = with_tenants(stable(NOW - DAY * 100, born), born);
        let first = plan(&state, NOW, &policy());
        let Some(Action::RecordTenants { tenants, removed }) = first.first() else {
            panic!("{:?}", kinds(&first))
        };
        assert_eq!(tenants.len(), 3);
        state.record.tenants = tenants.clone();
        state.record.removed = removed.clone();
        assert!(plan(&state, NOW, &policy()).is_empty());
        // team-b leaves the overlay: recorded as removed with its expiry, nothing written to it.
        state.clients.remove(2);
        let actions = plan(&state, NOW, &policy());
        assert_eq!(kinds(&actions), ["record"]);
        let Action::RecordTenants { tenants, removed } = &actions[0] else {
            panic!()
        };
        assert_eq!(tenants.keys().collect::<Vec<_>>(), ["team-a", "team-c"]);
        assert_eq!(removed["team-b"], born + DAY * 90);
        state.record.tenants = tenants.clone();
        state.record.removed = removed.clone();
        assert!(plan(&state, NOW, &policy()).is_empty());
        // Once its certificate has expired, the entry goes.
        let later = born + DAY * 91;
        let actions = plan(&state, later, &policy());
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::RecordTenants { removed, .. } if removed.is_empty()))
        );
    }
}
