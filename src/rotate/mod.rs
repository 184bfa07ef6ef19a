//! Certificate rotation: renew leaves before expiry and roll the CA over in phases.
//!
//! - [`state`] reads the Secrets and the workload into a typed state (pure).
//! - [`planner`] decides the next actions (pure; see its docs for the phases).
//! - [`apply`] turns actions into Secret writes and restarts and runs them against
//!   any [`apply::Cluster`], with conflict retries. The simulation and the real
//!   executor share it.
//! - [`precheck`] compares the live objects with the policy before the first write (pure).
//! - [`executor`] is the [`apply::Cluster`] over the Kubernetes API (`kube`); [`observe`]
//!   connects to the buildkitd replicas over TLS for it (IO edges).
//! - [`namespace`] picks the namespace the way kubectl does (pure rules, thin IO).
//! - [`status`] summarizes the state for `kiln status`.

pub mod apply;
pub mod executor;
pub mod namespace;
pub mod observe;
pub mod planner;
pub mod precheck;
pub mod state;
pub mod status;

use crate::overlay::{Overlay, Workload};
use crate::pki::{self, Algorithm, San, SecretFormat};

pub use apply::{Cluster, ClusterError, Report, RunOptions, run};
pub use planner::{Action, ForceRenew, Policy, plan};
pub use state::{Snapshot, State, read_state};

/// The first 16 characters of a fingerprint or serial (hex), enough to tell them apart in messages.
pub fn short_hex(hex: &str) -> &str {
    hex.get(..16).unwrap_or(hex)
}

/// Why a rotation run could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The overlay's certificate settings cannot produce certificates.
    #[error("failed to read the certificate settings: {0}")]
    Settings(String),
    /// A cluster call failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Every attempt ran into a write conflict.
    #[error(
        "failed to write the Secrets: {attempts} attempts in a row hit a conflict (HTTP 409) with another writer; run again"
    )]
    Conflicts { attempts: u32 },
    /// Issuing a certificate failed.
    #[error("failed to issue {what}: {source}")]
    Issue {
        what: String,
        #[source]
        source: pki::PkiError,
    },
    /// The cluster does not match the policy (checked before the first write).
    #[error("failed the checks before the first write: {0}")]
    Mismatch(#[from] precheck::Mismatch),
    /// The workload to restart does not exist.
    #[error(
        "failed to find {kind} {name} in namespace {namespace}: it does not exist; check buildkit.workload and buildkit.serviceName in the overlay"
    )]
    WorkloadMissing {
        kind: &'static str,
        name: String,
        namespace: String,
    },
    /// A planner invariant did not hold (a bug).
    #[error("failed to apply the plan: {0}")]
    Plan(String),
}

/// Everything a run needs to know, from the overlay and the flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// The namespace of the Secrets and the workload.
    pub namespace: String,
    /// The CA Secret name.
    pub ca_secret: String,
    /// The daemon Secret name.
    pub daemon_secret: String,
    /// The client Secret name (the same in every tenant namespace).
    pub client_secret: String,
    /// The tenant namespaces besides the farm's own, in the overlay's order.
    pub tenants: Vec<String>,
    /// Deployment or StatefulSet.
    pub workload: Workload,
    /// The workload (and Service) name.
    pub workload_name: String,
    /// Key names and Secret type of the leaf Secrets.
    pub format: SecretFormat,
    /// Key algorithm of new certificates.
    pub algorithm: Algorithm,
    /// SANs of the daemon certificate.
    pub daemon_sans: Vec<San>,
    /// The planner policy.
    pub policy: Policy,
    /// The daemon's TLS port (`buildkit.port`), where replicas are observed.
    pub port: u16,
}

impl Config {
    /// Build the run config from a resolved overlay. `namespace` overrides the overlay's.
    pub fn from_overlay(
        overlay: &Overlay,
        namespace: Option<&str>,
        force: Option<ForceRenew>,
    ) -> Result<Self, RotateError> {
        let namespace = namespace.unwrap_or(&overlay.namespace).to_string();
        let certs = &overlay.certs;
        let service = &overlay.buildkit.service_name;
        let daemon_sans = pki::daemon_sans(service, &namespace, &certs.extra_sans)
            .map_err(|e| RotateError::Settings(e.to_string()))?;
        if certs.validity.is_zero() || certs.ca_validity.is_zero() {
            return Err(RotateError::Settings(
                "certs.validity and certs.caValidity must be longer than 0s".into(),
            ));
        }
        let century = crate::duration::Duration::from_days(100 * 365);
        for (field, value) in [
            ("certs.caValidity", certs.ca_validity),
            ("certs.validity", certs.validity),
            ("rotation.propagationDelay", overlay.rotation.propagation_delay),
        ] {
            if value > century {
                return Err(RotateError::Settings(format!(
                    "{field} ({value}) must be at most 100y"
                )));
            }
        }
        if certs.validity >= certs.ca_validity {
            return Err(RotateError::Settings(format!(
                "certs.validity ({}) must be shorter than certs.caValidity ({})",
                certs.validity, certs.ca_validity
            )));
        }
        if certs.leaf_renew_before() >= certs.validity {
            return Err(RotateError::Settings(format!(
                "certs.renewBefore ({}) must be shorter than certs.validity ({})",
                certs.leaf_renew_before(),
                certs.validity
            )));
        }
        let policy = Policy {
            ca_validity: certs.ca_validity.as_time(),
            leaf_validity: certs.validity.as_time(),
            leaf_renew_before: certs.leaf_renew_before().as_time(),
            ca_renew_before: certs.ca_renew_before().as_time(),
            propagation_delay: overlay.rotation.propagation_delay.as_time(),
            restart: overlay.rotation.restart_strategy,
            daemon_sans: daemon_sans.iter().map(ToString::to_string).collect(),
            force,
        };
        let tenants = overlay
            .tenants
            .iter()
            .map(|t| t.namespace.clone())
            .filter(|ns| *ns != namespace)
            .collect();
        Ok(Self {
            namespace,
            ca_secret: certs.secrets.ca.clone(),
            daemon_secret: certs.secrets.daemon.clone(),
            client_secret: certs.secrets.client.clone(),
            tenants,
            workload: overlay.buildkit.workload,
            workload_name: service.clone(),
            format: certs.format,
            algorithm: certs.algorithm,
            daemon_sans,
            policy,
            port: overlay.buildkit.port,
        })
    }

    /// Every namespace with a client Secret: the farm's first, then the tenants.
    pub fn client_namespaces(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.namespace.as_str()).chain(self.tenants.iter().map(String::as_str))
    }

    /// `deployment` or `statefulset`.
    pub fn workload_kind(&self) -> &'static str {
        match self.workload {
            Workload::Deployment => "deployment",
            Workload::Statefulset => "statefulset",
        }
    }
}
