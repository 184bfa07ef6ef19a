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
        ("client", &config.client_secret, &state.client),
    ] {
        certs.push(match slot {
            Slot::Ok(leaf) => cert_line(role, secret, &leaf.info, now, policy.leaf_renew_before),
            other => blank_line(role, secret, other),
        });
    }
    let healthy = certs.iter().all(|c| matches!(c.state, "ok" | "renew-due"));
    let next = next_action(state, now, policy).map(|(at, actions)| NextAction {
        at,
        actions: actions
            .iter()
            .filter_map(|a| match a {
                Action::WriteCa { reason, .. } => Some(format!("Secret/{}: {reason}", config.ca_secret)),
                Action::WriteLeaf { kind, reason, .. } => {
                    let name = match kind {
                        crate::pki::LeafKind::Daemon => &config.daemon_secret,
                        crate::pki::LeafKind::Client => &config.client_secret,
                    };
                    Some(format!("Secret/{name}: {reason}"))
                }
                Action::Restart { reason } => Some(format!("restart {}: {reason}", config.workload_name)),
                Action::IssueCa { .. } | Action::Warn { .. } => None,
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

/// The CA phase as both `kiln status` and `kiln rotate` print it: `stable`,
/// `introduced`, `leaves-reissued`, or `none` without a usable CA.
pub fn phase_label(phase: Option<Phase>) -> String {
    phase.map(|p| p.to_string()).unwrap_or_else(|| "none".into())
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
        let expires = cert
            .not_after
            .map(crate::pki::rfc3339)
            .unwrap_or_else(|| "-".into());
        let days = cert
            .days_left
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<12} {:<28} {:<10} {:<22} {:>9}",
            cert.role, cert.secret, cert.state, expires, days
        );
        if let Some(detail) = &cert.detail {
            let _ = writeln!(out, "  {detail}");
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
