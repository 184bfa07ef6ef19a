//! `kiln status`: what the Secrets hold and what rotation will do next. Pure.

use std::fmt::Write as _;

use serde::Serialize;
use time::OffsetDateTime;

use super::Config;
use super::apply::{ReplicaReport, replica_reports};
use super::planner::{Action, next_action, plan, waiting_for};
use super::state::{CertInfo, OtherCa, Phase, Slot, State};

/// One certificate's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertStatus {
    /// `ca`, `next-ca`, `retiring-ca`, `daemon` or `client`.
    pub role: &'static str,
    /// The Secret it lives in.
    pub secret: String,
    /// `ok`, `renew-due`, `expired`, `missing`, `empty`, `broken` or `key-lost` (a CA
    /// whose key is missing or does not match).
    pub state: &'static str,
    /// Why, for `broken`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Serial (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Expiry.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub not_after: Option<OffsetDateTime>,
    /// Whole days left (negative once expired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_left: Option<i64>,
}

/// One tenant's client Secret (the farm's own namespace is a tenant too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The tenant namespace.
    pub namespace: String,
    /// The client Secret's name there.
    pub secret: String,
    /// `ok`, `renew-due`, `expired`, `empty`, `broken`, `missing` (the namespace, the
    /// Secret or its Role does not exist yet), `unreadable` (renewed before, cannot be read
    /// now), `held` (does not match the policy, left alone) or `removed` (dropped from the
    /// overlay, its certificate still valid).
    pub state: &'static str,
    /// Which CA of the CA Secret signed it: `ca`, `next-ca`, `retiring-ca`, or `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<&'static str>,
    /// What it means, for `missing`, `unreadable`, `held`, `removed` and `broken`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Serial (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Expiry.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub not_after: Option<OffsetDateTime>,
    /// Whole days left (negative once expired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_left: Option<i64>,
}

/// The next thing `kiln rotate` will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NextAction {
    /// When (now, if due).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What, one line per change.
    pub actions: Vec<String>,
}

/// What `kiln status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The namespace read.
    pub namespace: String,
    /// The time the report is for.
    #[serde(with = "time::serde::rfc3339")]
    pub now: OffsetDateTime,
    /// The CA rollover phase (None without a usable CA).
    pub phase: Option<Phase>,
    /// When the phase started.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub phase_since: Option<OffsetDateTime>,
    /// Every certificate.
    pub certs: Vec<CertStatus>,
    /// One row per tenant: the farm's own namespace first, then the overlay's tenants,
    /// then the removed tenants whose certificates are still valid.
    pub tenants: Vec<TenantStatus>,
    /// The workload exists.
    pub workload_found: bool,
    /// `Deployment/buildkitd` or `StatefulSet/buildkitd`.
    pub workload: String,
    /// It was restarted for the current daemon Secret and its rollout is complete.
    pub workload_current: bool,
    /// What each replica serves, as seen over TLS.
    pub replicas: Vec<ReplicaReport>,
    /// Why the replicas could not be listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas_error: Option<String>,
    /// During a rollover: what holds its next step back (None when nothing does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holding_back: Option<String>,
    /// What `kiln rotate` would warn about now.
    pub warnings: Vec<String>,
    /// The next action of `kiln rotate`, if any within the certificates' lifetime.
    pub next_action: Option<NextAction>,
    /// Nothing is expired, missing or broken.
    pub healthy: bool,
}

fn days_left(info: &CertInfo, now: OffsetDateTime) -> i64 {
    (info.not_after - now).whole_days()
}

fn cert_line(
    role: &'static str,
    secret: &str,
    info: &CertInfo,
    now: OffsetDateTime,
    renew_before: time::Duration,
) -> CertStatus {
    let state = if info.not_after <= now {
        "expired"
    } else if info.not_after - now < renew_before {
        "renew-due"
    } else {
        "ok"
    };
    CertStatus {
        role,
        secret: secret.to_string(),
        state,
        detail: None,
        serial: Some(info.serial.clone()),
        not_after: Some(info.not_after),
        days_left: Some(days_left(info, now)),
    }
}

fn blank_line<T>(role: &'static str, secret: &str, slot: &Slot<T>) -> CertStatus {
    let (state, detail) = match slot {
        Slot::Missing => ("missing", None),
        Slot::Empty => ("empty", None),
        Slot::Broken(why) => ("broken", Some(why.clone())),
        Slot::Ok(_) => ("ok", None),
    };
    CertStatus {
        role,
        secret: secret.to_string(),
        state,
        detail,
        serial: None,
        not_after: None,
        days_left: None,
    }
}

/// Summarize the state at `now`.
pub fn summarize(state: &State, config: &Config, now: OffsetDateTime) -> StatusReport {
    let policy = &config.policy;
    let mut certs = Vec::new();
    match &state.ca {
        Slot::Ok(ca) => {
            certs.push(cert_line(
                "ca",
                &config.ca_secret,
                &ca.signing.info,
                now,
                policy.ca_renew_before,
            ));
            match &ca.other {
                Some(OtherCa::Next(next)) => certs.push(cert_line(
                    "next-ca",
                    &config.ca_secret,
                    &next.info,
                    now,
                    policy.ca_renew_before,
                )),
                Some(OtherCa::Retiring(old)) => certs.push(cert_line(
                    "retiring-ca",
                    &config.ca_secret,
                    &old.info,
                    now,
                    time::Duration::ZERO,
                )),
                None => {}
            }
        }
        other => certs.push(blank_line("ca", &config.ca_secret, other)),
    }
    if let Some(problem) = state.ca.ok().and_then(|ca| ca.key_problem.as_ref()) {
        certs[0].state = "key-lost";
        certs[0].detail = Some(problem.clone());
    }
    for (role, secret, slot) in [
        ("daemon", &config.daemon_secret, &state.daemon),
        ("client", &config.client_secret, state.farm_client()),
    ] {
        certs.push(match slot {
            Slot::Ok(leaf) => cert_line(role, secret, &leaf.info, now, policy.leaf_renew_before),
            other => blank_line(role, secret, other),
        });
    }
    let tenants = tenant_rows(state, config, now);
    // A tenant that is not there yet or was removed is a warning, not a failure.
    let healthy = certs.iter().all(|c| matches!(c.state, "ok" | "renew-due"))
        && tenants
            .iter()
            .all(|t| matches!(t.state, "ok" | "renew-due" | "missing" | "removed"));
    let next = next_action(state, now, policy).map(|(at, actions)| NextAction {
        at,
        actions: actions
            .iter()
            .filter_map(|a| match a {
                Action::WriteCa { reason, .. } => Some(format!("Secret/{}: {reason}", config.ca_secret)),
                Action::WriteLeaf {
                    kind,
                    namespace,
                    reason,
                    ..
                } => {
                    let name = match kind {
                        crate::pki::LeafKind::Daemon => &config.daemon_secret,
                        crate::pki::LeafKind::Client => &config.client_secret,
                    };
                    if *namespace == config.namespace {
                        Some(format!("Secret/{name}: {reason}"))
                    } else {
                        Some(format!("Secret/{namespace}/{name}: {reason}"))
                    }
                }
                Action::Restart { reason } => Some(format!("restart {}: {reason}", config.workload_name)),
                Action::IssueCa { .. } | Action::Warn { .. } | Action::RecordTenants { .. } => None,
            })
            .collect(),
    });
    let workload_current = match (&state.workload, state.daemon.ok()) {
        (Some(w), Some(daemon)) => {
            w.rollout_complete && w.daemon_certs.as_deref() == Some(daemon.version().as_str())
        }
        _ => false,
    };
    let holding_back = waiting_for(state, now, policy);
    let warnings = plan(state, now, policy)
        .into_iter()
        .filter_map(|a| match a {
            Action::Warn { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    let workload = match config.workload {
        crate::overlay::Workload::Deployment => format!("Deployment/{}", config.workload_name),
        crate::overlay::Workload::Statefulset => format!("StatefulSet/{}", config.workload_name),
    };
    StatusReport {
        namespace: config.namespace.clone(),
        now,
        phase: state.ca.ok().map(|ca| ca.phase()),
        phase_since: state.ca.ok().and_then(|ca| ca.phase_since),
        certs,
        tenants,
        workload_found: state.workload.is_some(),
        workload,
        workload_current,
        replicas: replica_reports(state),
        replicas_error: state.observed.as_ref().and_then(|o| o.error.clone()),
        holding_back,
        warnings,
        next_action: next,
        healthy,
    }
}

/// The tenant rows of [`StatusReport::tenants`].
fn tenant_rows(state: &State, config: &Config, now: OffsetDateTime) -> Vec<TenantStatus> {
    let ca = state.ca.ok();
    let rollover = ca.is_some_and(|ca| ca.phase() != Phase::Stable);
    let which_ca = |issuer: Option<&String>| -> &'static str {
        let Some(ca) = ca else { return "unknown" };
        let Some(issuer) = issuer else { return "unknown" };
        if *issuer == ca.signing.info.fingerprint {
            return "ca";
        }
        match &ca.other {
            Some(OtherCa::Next(next)) if next.info.fingerprint == *issuer => "next-ca",
            Some(OtherCa::Retiring(old)) if old.info.fingerprint == *issuer => "retiring-ca",
            _ => "unknown",
        }
    };
    let mut rows: Vec<TenantStatus> = state
        .clients
        .iter()
        .map(|client| {
            let mut row = TenantStatus {
                namespace: client.namespace.clone(),
                secret: config.client_secret.clone(),
                state: "ok",
                ca: None,
                detail: None,
                serial: None,
                not_after: None,
                days_left: None,
            };
            if let Some(why) = &client.held {
                row.state = "held";
                row.detail = Some(format!(
                    "does not match the policy, so kiln leaves it alone: {why}; until it is fixed it is not renewed and a CA rollover step waits for it"
                ));
                if let Slot::Ok(leaf) = &client.slot {
                    row.ca = Some(which_ca(leaf.issuer.as_ref()));
                    row.serial = Some(leaf.info.serial.clone());
                    row.not_after = Some(leaf.info.not_after);
                    row.days_left = Some(days_left(&leaf.info, now));
                }
                return row;
            }
            match &client.slot {
                Slot::Ok(leaf) => {
                    let line = cert_line("client", "", &leaf.info, now, config.policy.leaf_renew_before);
                    row.state = line.state;
                    row.ca = Some(which_ca(leaf.issuer.as_ref()));
                    row.serial = line.serial;
                    row.not_after = line.not_after;
                    row.days_left = line.days_left;
                }
                Slot::Missing if let Some(expiry) = state.record.tenants.get(&client.namespace) => {
                    // kiln wrote it before: a Role or Secret deleted since is a failure
                    // (its certificate will expire unrenewed), not a namespace to come.
                    row.state = "unreadable";
                    row.not_after = Some(*expiry);
                    row.days_left = Some((*expiry - now).whole_days());
                    row.detail = Some(format!(
                        "kiln renewed it before but cannot read it now: the Secret or the Role {} in namespace {} was deleted; its certificate expires at {} unrenewed, and a CA rollover step waits for it",
                        crate::overlay::tenant_rbac_name(&config.namespace),
                        client.namespace,
                        crate::pki::rfc3339(*expiry)
                    ));
                }
                Slot::Missing if client.absent() => {
                    row.state = "missing";
                    row.detail = Some(if rollover {
                        format!(
                            "waiting for tenant namespace {} to exist before the CA rollover can go on",
                            client.namespace
                        )
                    } else {
                        format!(
                            "the namespace, the Secret or the Role {} does not exist yet; kiln fills the Secret once they exist, and a CA rollover step waits for it",
                            crate::overlay::tenant_rbac_name(&config.namespace)
                        )
                    });
                }
                other => {
                    let line = blank_line("client", "", other);
                    row.state = line.state;
                    row.detail = line.detail;
                }
            }
            row
        })
        .collect();
    let present: Vec<&str> = state.clients.iter().map(|c| c.namespace.as_str()).collect();
    // Dropped since the last record, or recorded as removed: the latest expiry counts.
    let mut removed: std::collections::BTreeMap<&String, OffsetDateTime> = Default::default();
    for (ns, at) in state.record.tenants.iter().chain(&state.record.removed) {
        if !present.contains(&ns.as_str()) && *at > now {
            let entry = removed.entry(ns).or_insert(*at);
            *entry = (*entry).max(*at);
        }
    }
    for (namespace, expiry) in removed {
        rows.push(TenantStatus {
            namespace: namespace.clone(),
            secret: config.client_secret.clone(),
            state: "removed",
            ca: None,
            detail: Some(removed_message(namespace, expiry)),
            serial: None,
            not_after: Some(expiry),
            days_left: Some((expiry - now).whole_days()),
        });
    }
    rows
}

/// What status says about a tenant dropped from the overlay.
pub fn removed_message(namespace: &str, expiry: OffsetDateTime) -> String {
    format!(
        "{namespace}: removed from the overlay; its certificate stays valid until {}; kiln cannot revoke (buildkitd has no CRL)",
        crate::pki::rfc3339(expiry)
    )
}

/// The CA phase as both `kiln status` and `kiln rotate` print it: `stable`,
/// `introduced`, `leaves-reissued`, or `none` without a usable CA.
pub fn phase_label(phase: Option<Phase>) -> String {
    phase.map(|p| p.to_string()).unwrap_or_else(|| "none".into())
}

/// The EXPIRES and DAYS LEFT columns of a row, `-` where unknown.
fn expiry_columns(not_after: Option<OffsetDateTime>, days_left: Option<i64>) -> (String, String) {
    (
        not_after.map(crate::pki::rfc3339).unwrap_or_else(|| "-".into()),
        days_left.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
    )
}

/// The human table.
pub fn table(report: &StatusReport) -> String {
    let mut out = String::new();
    let since = report
        .phase_since
        .filter(|_| report.phase.is_some())
        .map(|t| format!(" since {}", crate::pki::rfc3339(t)))
        .unwrap_or_default();
    let none = if report.phase.is_none() {
        " (no usable CA)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "namespace {}: CA phase {}{since}{none}",
        report.namespace,
        phase_label(report.phase)
    );
    let _ = writeln!(
        out,
        "{:<12} {:<28} {:<10} {:<22} {:>9}",
        "CERT", "SECRET", "STATE", "EXPIRES", "DAYS LEFT"
    );
    for cert in &report.certs {
        let (expires, days) = expiry_columns(cert.not_after, cert.days_left);
        let _ = writeln!(
            out,
            "{:<12} {:<28} {:<10} {:<22} {:>9}",
            cert.role, cert.secret, cert.state, expires, days
        );
        if let Some(detail) = &cert.detail {
            let _ = writeln!(out, "  {detail}");
        }
    }
    if report.tenants.len() > 1 || report.tenants.iter().any(|t| t.state != "ok") {
        let _ = writeln!(
            out,
            "{:<28} {:<10} {:<12} {:<22} {:>9}",
            "TENANT", "STATE", "CA", "EXPIRES", "DAYS LEFT"
        );
        for tenant in &report.tenants {
            let (expires, days) = expiry_columns(tenant.not_after, tenant.days_left);
            let _ = writeln!(
                out,
                "{:<28} {:<10} {:<12} {:<22} {:>9}",
                tenant.namespace,
                tenant.state,
                tenant.ca.unwrap_or("-"),
                expires,
                days
            );
            if let Some(detail) = &tenant.detail {
                let _ = writeln!(out, "  {detail}");
            }
        }
    }
    let daemon = report.certs.iter().find(|c| c.role == "daemon");
    let expired = daemon
        .filter(|d| d.state == "expired")
        .and_then(|d| d.not_after)
        .map(|t| format!("; that certificate expired at {}", crate::pki::rfc3339(t)))
        .unwrap_or_default();
    let workload = if !report.workload_found {
        format!("{} not found", report.workload)
    } else if report.workload_current {
        format!(
            "{}: restarted for the current daemon Secret, rollout complete{expired}",
            report.workload
        )
    } else {
        format!("{}: restart or rollout pending", report.workload)
    };
    let _ = writeln!(out, "buildkitd: {workload}");
    if let Some(error) = &report.replicas_error {
        let _ = writeln!(out, "  replicas cannot be listed: {error}");
    }
    for replica in &report.replicas {
        let what = match replica.state {
            "unreachable" => format!("unreachable: {}", replica.detail.as_deref().unwrap_or_default()),
            state => {
                let serial = replica.serial.as_deref().map(super::short_hex).unwrap_or("-");
                let accepts = match replica.accepts_probe {
                    Some(true) => ", accepts the probe client certificate",
                    Some(false) => ", REFUSES the probe client certificate",
                    None => "",
                };
                let which = if state == "current" {
                    "the current daemon certificate"
                } else {
                    "an old daemon certificate"
                };
                format!("serves {which} (serial {serial}){accepts}")
            }
        };
        let _ = writeln!(out, "  replica {}: {what}", replica.name);
    }
    if let Some(holding) = &report.holding_back {
        let _ = writeln!(out, "rollover held back: {holding}");
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    match &report.next_action {
        None => {
            let _ = writeln!(out, "next action: none scheduled");
        }
        Some(next) => {
            let when = if next.at <= report.now {
                "now".to_string()
            } else {
                crate::pki::rfc3339(next.at)
            };
            let _ = writeln!(out, "next action: {when}");
            for action in &next.actions {
                let _ = writeln!(out, "  {action}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::{Overlay, Tenant};
    use crate::rotate::apply::{SecretRole, Write, materialize};
    use crate::rotate::plan;
    use crate::rotate::state::{RawClient, RawSecret, Snapshot, read_state};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2030-06-01 03:17 UTC);

    fn shell() -> RawSecret {
        RawSecret {
            exists: true,
            resource_version: Some("1".into()),
            ..RawSecret::default()
        }
    }

    fn overlay(tenants: &[&str]) -> Overlay {
        Overlay {
            tenants: tenants
                .iter()
                .map(|ns| Tenant {
                    namespace: ns.to_string(),
                    task: true,
                })
                .collect(),
            ..Overlay::default()
        }
    }

    #[test]
    fn one_row_per_tenant_with_missing_and_removed_ones() {
        let config = Config::from_overlay(&overlay(&["team-a", "team-b", "team-x"]), None, None).unwrap();
        let mut snapshot = Snapshot {
            ca: shell(),
            daemon: shell(),
            // team-b's namespace does not exist yet.
            clients: config
                .client_namespaces()
                .map(|ns| RawClient {
                    namespace: ns.to_string(),
                    secret: if ns == "team-b" {
                        RawSecret::default()
                    } else {
                        shell()
                    },
                    held: None,
                })
                .collect(),
            workload: None,
            other_workload: None,
        };
        let state = read_state(&snapshot, config.format);
        let actions = plan(&state, NOW, &config.policy);
        let (writes, _) = materialize(&snapshot, &state, &actions, &config, NOW).unwrap();
        for write in writes {
            let Write::Secret(w) = write else { continue };
            let target = match w.role {
                SecretRole::Ca => &mut snapshot.ca,
                SecretRole::Daemon => &mut snapshot.daemon,
                SecretRole::Client => {
                    &mut snapshot
                        .clients
                        .iter_mut()
                        .find(|c| c.namespace == w.namespace)
                        .unwrap()
                        .secret
                }
            };
            target.data = w.data;
            target.annotations = w.annotations;
        }
        // team-x leaves the overlay.
        let config = Config::from_overlay(&overlay(&["team-a", "team-b"]), None, None).unwrap();
        snapshot.clients.retain(|c| c.namespace != "team-x");
        let state = read_state(&snapshot, config.format);
        let report = summarize(&state, &config, NOW + time::Duration::days(1));
        let rows: Vec<(&str, &str, Option<&str>)> = report
            .tenants
            .iter()
            .map(|t| (t.namespace.as_str(), t.state, t.ca))
            .collect();
        assert_eq!(
            rows,
            [
                ("buildkit", "ok", Some("ca")),
                ("team-a", "ok", Some("ca")),
                ("team-b", "missing", None),
                ("team-x", "removed", None),
            ]
        );
        assert!(report.healthy, "missing and removed tenants are warnings");
        let expiry = NOW + time::Duration::days(90);
        assert_eq!(report.tenants[3].not_after, Some(expiry));
        assert_eq!(
            report.tenants[3].detail.as_deref(),
            Some(
                "team-x: removed from the overlay; its certificate stays valid until 2030-08-30T03:17:00Z; kiln cannot revoke (buildkitd has no CRL)"
            )
        );
        assert!(report.warnings[0].starts_with("tenant team-b: its client Secret cannot be read"));
        let text = table(&report);
        assert!(
            text.lines()
                .any(|l| l.starts_with("team-a") && l.contains(" ok ") && l.contains(" ca ")),
            "{text}"
        );
        assert!(text.contains("  team-x: removed from the overlay"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["tenants"][2]["state"], "missing");
        assert_eq!(json["tenants"][3]["notAfter"], "2030-08-30T03:17:00Z");
        // Once that certificate has expired, the row goes.
        let later = summarize(&state, &config, expiry + time::Duration::days(1));
        assert!(later.tenants.iter().all(|t| t.namespace != "team-x"));
    }
}
