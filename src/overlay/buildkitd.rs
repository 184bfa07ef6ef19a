//! `buildkit.config`: the buildkitd.toml settings an overlay may add, typed after the keys
//! BuildKit documents (docs/buildkitd.toml.md at v0.32.2) and spelled as in that file, so a
//! snippet from BuildKit's docs can be written as YAML here. kiln renders them into the
//! `buildkitd.toml` ConfigMap next to the garbage collection it derives from
//! `buildkit.cache.size` (see `render::buildkitd`).
//!
//! Keys kiln sets itself (the GC caps, the state root, the listen addresses and TLS files, the
//! sandbox mode) and keys that would break the pod (the containerd worker) are left out of
//! the model, so writing one is an unknown-field error; [`field_hint`] says why.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// Extra buildkitd.toml settings, merged into the file kiln renders.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildkitdConfig {
    /// Insecure entitlements builds may ask for, such as `network.host` or `security.insecure`.
    #[serde(
        rename = "insecure-entitlements",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub insecure_entitlements: Vec<String>,
    /// Enforce the proxy network for every build (BuildKit v0.31+).
    #[serde(rename = "proxyNetwork", default, skip_serializing_if = "Option::is_none")]
    pub proxy_network: Option<bool>,
    /// A directory of extra provenance environment files (must exist in the container).
    #[serde(rename = "provenanceEnvDir", default, skip_serializing_if = "Option::is_none")]
    pub provenance_env_dir: Option<String>,
    /// `[log]`: the daemon's log format and level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Log>,
    /// `[dns]`: resolv.conf settings for build containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// `[otel]`: the OpenTelemetry collector socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otel: Option<Otel>,
    /// `[cdi]`: Container Device Interface support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdi: Option<Cdi>,
    /// `[history]`: how many finished build records buildkitd keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
    /// `[worker.oci]` settings other than garbage collection.
    #[serde(default, skip_serializing_if = "Worker::is_empty")]
    pub worker: Worker,
    /// `[registry."<host>"]`: mirrors and TLS per registry host, such as `docker.io`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry: BTreeMap<String, Registry>,
    /// `[frontend."dockerfile.v0"]` and `[frontend."gateway.v0"]`.
    #[serde(default, skip_serializing_if = "Frontend::is_empty")]
    pub frontend: Frontend,
    /// `[system]`: platform scanning and registry concurrency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<System>,
}

/// The daemon's log output.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// json or text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
    /// error, warn, info, debug or trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
}

/// The daemon's log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// logrus text.
    Text,
}

/// The daemon's log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    Info,
    /// Debug output.
    Debug,
    /// Everything.
    Trace,
}

/// resolv.conf settings for build containers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Name server addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// resolv.conf options, such as `edns0`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Search domains.
    #[serde(rename = "searchDomains", default, skip_serializing_if = "Vec::is_empty")]
    pub search_domains: Vec<String>,
}

/// The OpenTelemetry collector.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Otel {
    /// The collector's trace socket path.
    #[serde(rename = "socketPath", default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
}

/// Container Device Interface support.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cdi {
    /// Turn CDI off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Directories scanned for CDI spec files.
    #[serde(rename = "specDirs", default, skip_serializing_if = "Vec::is_empty")]
    pub spec_dirs: Vec<String>,
}

/// The build history buildkitd keeps (what `buildctl debug histories` lists).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct History {
    /// The age past which a finished record may be deleted, such as `48h` or `7d`.
    #[serde(rename = "maxAge", default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// The number of finished records past which old ones may be deleted.
    #[serde(rename = "maxEntries", default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u32>,
}

/// `[worker]`: only the OCI worker runs in a kiln pod.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Worker {
    /// `[worker.oci]` settings other than garbage collection.
    #[serde(default, skip_serializing_if = "OciWorker::is_empty")]
    pub oci: OciWorker,
}

impl Worker {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.oci.is_empty()
    }
}

/// `[worker.oci]` settings other than garbage collection (which kiln derives from the cache size).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OciWorker {
    /// The platforms the worker reports (detected when unset), such as `linux/amd64`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// auto (the default), overlayfs, fuse-overlayfs, native or stargz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshotter: Option<String>,
    /// An alternate OCI runtime binary in the image, such as `crun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// An AppArmor profile for build containers, already loaded on the node.
    #[serde(rename = "apparmor-profile", default, skip_serializing_if = "Option::is_none")]
    pub apparmor_profile: Option<String>,
    /// The most build steps run at once.
    #[serde(rename = "max-parallelism", default, skip_serializing_if = "Option::is_none")]
    pub max_parallelism: Option<u32>,
    /// Reusable CNI network namespaces kept in a pool.
    #[serde(rename = "cniPoolSize", default, skip_serializing_if = "Option::is_none")]
    pub cni_pool_size: Option<u32>,
    /// Worker labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl OciWorker {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Settings for one registry host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Mirrors tried before the registry itself: a host, or a host and path, such as
    /// `mirror.gcr.io` or `harbor.example.com/proxy.docker.io` (no `https://`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    /// Talk plain HTTP to this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<bool>,
    /// Use HTTPS without verifying the certificate. Do not combine with `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// CA files to trust for this host (paths in the container: mount them yourself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<String>,
    /// Client key pairs for this host (paths in the container: mount them yourself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keypair: Vec<KeyPair>,
}

/// A client certificate and key, as file paths.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    /// The key file.
    pub key: String,
    /// The certificate file.
    pub cert: String,
}

/// The frontends buildkitd serves.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Frontend {
    /// The built-in Dockerfile frontend.
    #[serde(rename = "dockerfile.v0", default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<DockerfileFrontend>,
    /// Frontends run from images (`#syntax=` lines).
    #[serde(rename = "gateway.v0", default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayFrontend>,
}

impl Frontend {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.dockerfile.is_none() && self.gateway.is_none()
    }
}

/// The built-in Dockerfile frontend.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DockerfileFrontend {
    /// Serve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Frontends run from images.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayFrontend {
    /// Serve them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Only these image repositories (without tag) may be frontends; empty allows all.
    #[serde(
        rename = "allowedRepositories",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allowed_repositories: Vec<String>,
}

/// Platform scanning and registry concurrency.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct System {
    /// How often emulated platforms are rescanned, such as `1h`.
    #[serde(
        rename = "platformsCacheMaxAge",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub platforms_cache_max_age: Option<Duration>,
    /// The most connections per registry (BuildKit v0.31+).
    #[serde(
        rename = "maxRegistryConcurrency",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_registry_concurrency: Option<u32>,
}

/// Why a key the loader rejected as unknown is not accepted, or where it moved: `None` for
/// a plain typo. `field` is the dotted path, such as `buildkit.cacheSize`.
pub fn field_hint(field: &str) -> Option<String> {
    const GC: &str = "kiln derives garbage collection from buildkit.cache.size, so the cache \
                      cannot fill its volume; remove this key (docs/objects.md shows the derivation)";
    let moved = |to: &str, example: &str| format!("moved to {to}; write it as {example}");
    let config = field.strip_prefix("buildkit.config.");
    Some(match (field, config) {
        ("buildkit.cacheSize", _) => moved("buildkit.cache.size", "`cache: {size: 50Gi}` under buildkit"),
        (_, Some("root")) => "kiln mounts the cache volume at buildkitd's default root; \
                              another root would put the cache outside it, so remove this key"
            .into(),
        (_, Some(grpc)) if grpc == "grpc" || grpc.starts_with("grpc.") => {
            "kiln sets buildkitd's listen addresses and TLS files with flags (buildkit.port, \
             certs.*); remove this key"
                .into()
        }
        (_, Some(c)) if c.starts_with("worker.containerd") => {
            "kiln runs BuildKit's OCI worker; the containerd worker needs the node's containerd \
             socket, which kiln does not mount"
                .into()
        }
        (_, Some("debug" | "trace")) => {
            "deprecated by BuildKit; set buildkit.config.log.level instead".into()
        }
        (
            _,
            Some(
                "worker.oci.gc"
                | "worker.oci.reservedSpace"
                | "worker.oci.maxUsedSpace"
                | "worker.oci.minFreeSpace"
                | "worker.oci.gckeepstorage"
                | "worker.oci.gcpolicy",
            ),
        ) => GC.into(),
        (_, Some("worker.oci.rootless" | "worker.oci.noProcessSandbox")) => {
            "set by buildkit.mode (rootless adds --oci-worker-no-process-sandbox); remove this key".into()
        }
        (_, Some("worker.oci.enabled")) => {
            "the OCI worker is the only worker in a kiln pod and stays enabled; remove this key".into()
        }
        _ => return None,
    })
}

/// The bytes of a Kubernetes quantity (`50Gi`, `100G`, `1.5Ti`, `5e9`), rounded down; None
/// when it is not one, or too large for a 64-bit signed byte count.
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    const SUFFIXES: &[(&str, u128)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
        ("", 1),
    ];
    let end = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit())
        || whole.len() + fraction.len() > 30
    {
        return None;
    }
    // value = digits / 10^fraction.len() * multiplier (or * 10^exponent).
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let (numerator, denominator) = match suffix.strip_prefix(['e', 'E']) {
        Some(exponent) => {
            let exponent: u32 = exponent.parse().ok().filter(|e| *e <= 30)?;
            (
                digits.checked_mul(10u128.pow(exponent))?,
                10u128.pow(fraction.len() as u32),
            )
        }
        None => {
            let (_, multiplier) = SUFFIXES.iter().find(|(name, _)| *name == suffix)?;
            (
                digits.checked_mul(*multiplier)?,
                10u128.pow(fraction.len() as u32),
            )
        }
    };
    u64::try_from(numerator / denominator)
        .ok()
        .filter(|b| i64::try_from(*b).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_bytes() {
        for (text, bytes) in [
            ("50Gi", 50 << 30),
            ("1.5Ti", 3 << 39),
            ("100G", 100_000_000_000),
            ("5e9", 5_000_000_000),
            ("1024", 1024),
            ("0.5Ki", 512),
        ] {
            assert_eq!(quantity_bytes(text), Some(bytes), "{text}");
        }
        for bad in ["", "Gi", "1.2.3Gi", "12x", "-1Gi", "1 Gi", "9Ei", "1e40", "500m"] {
            assert_eq!(quantity_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn hints_explain_moved_and_reserved_keys() {
        assert!(
            field_hint("buildkit.cacheSize")
                .unwrap()
                .starts_with("moved to buildkit.cache.size")
        );
        assert!(
            field_hint("buildkit.config.worker.oci.gcpolicy")
                .unwrap()
                .contains("buildkit.cache.size")
        );
        assert!(field_hint("buildkit.config.grpc.tls").is_some());
        assert!(field_hint("buildkit.config.worker.containerd.address").is_some());
        assert_eq!(field_hint("buildkit.config.registyr"), None);
        assert_eq!(field_hint("buildkit.bogus"), None);
    }
}
