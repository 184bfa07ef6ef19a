//! `kiln status`: what the Secrets hold and what rotation will do next. Pure.

use std::fmt::Write as _;

use serde::Serialize;
use time::OffsetDateTime;

use super::Config;
use super::planner::{Action, next_action};
use super::state::{CertInfo, OtherCa, Phase, Slot, State};

/// One certificate's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertStatus {
    /// `ca`, `next-ca`, `retiring-ca`, `daemon` or `client`.
    pub role: &'static str,
    /// The Secret it lives in.
    pub secret: String,
    /// `ok`, `renew-due`, `expired`, `missing`, `empty` or `broken`.
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
    /// Its rollout is complete and it runs the current daemon Secret.
    pub workload_current: bool,
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
    StatusReport {
        namespace: config.namespace.clone(),
        now,
        phase: state.ca.ok().map(|ca| ca.phase()),
        phase_since: state.ca.ok().and_then(|ca| ca.phase_since),
        certs,
        workload_found: state.workload.is_some(),
        workload_current,
        next_action: next,
        healthy,
    }
}

/// The human table.
pub fn table(report: &StatusReport) -> String {
    let mut out = String::new();
    let phase = report
        .phase
        .map(|p| p.to_string())
        .unwrap_or_else(|| "none".into());
    let since = report
        .phase_since
        .map(|t| format!(" since {}", crate::pki::rfc3339(t)))
        .unwrap_or_default();
    let _ = writeln!(out, "namespace {}: CA phase {phase}{since}", report.namespace);
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
    let workload = if !report.workload_found {
        "not found"
    } else if report.workload_current {
        "running the current daemon certificate"
    } else {
        "restart or rollout pending"
    };
    let _ = writeln!(out, "buildkitd: {workload}");
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
