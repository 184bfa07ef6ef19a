//! `buildkitd.toml`: the daemon's config file, rendered with the `toml` crate from typed
//! structs into the ConfigMap `<serviceName>-config`, with garbage collection sized from
//! `buildkit.cache.size` and the overlay's `buildkit.config` merged in.
//!
//! # Garbage collection
//! BuildKit's own default policy (cmd/buildkitd/config/gcpolicy.go, `DefaultGCPolicy`) takes
//! its caps as percentages of the disk under buildkitd's root. For an emptyDir that is the
//! node's disk, not the `sizeLimit` whose overrun gets the pod evicted, so kiln writes the
//! same four rules with caps in bytes computed from the volume size S:
//!
//! | cap | value | why |
//! |---|---|---|
//! | `maxUsedSpace` | 3/4 · S | GC runs after a build and at most once a minute: a quarter of the volume is headroom for what builds write between two passes, and for buildkitd's own metadata and history |
//! | `minFreeSpace` | 1/5 · S | on a PVC, GC also shrinks the cache when the volume itself runs low (a volume smaller than its claim, other writers) |
//! | `reservedSpace` | 1/10 · S | the floor GC never prunes below, so a busy farm keeps its most recent layers |
//!
//! The rules, in BuildKit's order: (1) build contexts, cache mounts and git checkouts unused
//! for 48h beyond 512 MB (or `maxUsedSpace` if smaller); (2) anything unused for 60 days
//! beyond the caps; (3) the unshared cache beyond the caps; (4) everything beyond the caps.
//!
//! With no size (an emptyDir without a limit) the volume is the node's disk, and kiln keeps
//! BuildKit's default percentages of it: reserved 10%, max used 80%, min free 20%. 20% free
//! is twice the kubelet's default hard-eviction threshold (`nodefs.available<10%`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Serialize, Serializer};

use super::meta::{Component, Meta, Wave};
use crate::duration::Duration;
use crate::overlay::{
    BuildkitdConfig, Cache, Cdi, Dns, DockerfileFrontend, Frontend, GatewayFrontend, History, Log, Mode,
    OciWorker, Otel, Registry, System, Worker,
};

/// The file name, both in the ConfigMap and on disk.
pub const FILE: &str = "buildkitd.toml";

/// The pod-template annotation holding the SHA-256 of the rendered file: a change to the
/// ConfigMap changes the pod template, which rolls the pods (buildkitd reads the file once).
pub const CHECKSUM_ANNOTATION: &str = "kiln.dev/buildkitd-config-sha256";

/// 512 MB: BuildKit's cap for the easily reproduced records of rule 1.
const REPRODUCIBLE_CAP: u64 = 512_000_000;

/// The ConfigMap's name: `<serviceName>-config`.
pub fn config_map_name(meta: &Meta) -> String {
    format!("{}-config", meta.overlay.buildkit.service_name)
}

/// The directory buildkitd reads `buildkitd.toml` from in `mode` (kiln also passes `--config`).
pub fn config_dir(mode: Mode) -> &'static str {
    match mode {
        // $HOME/.config/buildkit: the rootless image sets HOME=/home/user.
        Mode::Rootless => "/home/user/.config/buildkit",
        Mode::Privileged | Mode::Userns => "/etc/buildkit",
    }
}

/// A buildkitd disk-space value: a byte count, or a percentage of the disk under its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSpace {
    /// Bytes, written as a TOML integer.
    Bytes(u64),
    /// A percentage, written as the string `"<n>%"`.
    Percent(u8),
}

impl Serialize for DiskSpace {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // quantity_bytes keeps sizes within i64, TOML's integer range.
            DiskSpace::Bytes(bytes) => serializer.serialize_i64(i64::try_from(*bytes).unwrap_or(i64::MAX)),
            DiskSpace::Percent(percent) => serializer.collect_str(&format_args!("{percent}%")),
        }
    }
}

/// One `[[worker.oci.gcpolicy]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcPolicy {
    /// Also prune internal and shared records.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// containerd-style filters on the record type.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<&'static str>,
    /// Only records unused for this long, as a Go duration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_duration: Option<String>,
    /// Never prune below this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_space: Option<DiskSpace>,
    /// Prune above this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_used_space: Option<DiskSpace>,
    /// Prune further while less than this is free.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_free_space: Option<DiskSpace>,
}

/// The three caps of the size-bound rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcCaps {
    /// `reservedSpace`.
    pub reserved: DiskSpace,
    /// `maxUsedSpace`.
    pub max_used: DiskSpace,
    /// `minFreeSpace`.
    pub min_free: DiskSpace,
}

/// The caps for `cache` (see the module docs for the derivation).
pub fn gc_caps(cache: &Cache) -> GcCaps {
    match cache.size_bytes() {
        Some(size) => GcCaps {
            reserved: DiskSpace::Bytes(size / 10),
            max_used: DiskSpace::Bytes(size / 4 * 3),
            min_free: DiskSpace::Bytes(size / 5),
        },
        None => GcCaps {
            reserved: DiskSpace::Percent(10),
            max_used: DiskSpace::Percent(80),
            min_free: DiskSpace::Percent(20),
        },
    }
}

/// The four GC rules for `cache`, in the order buildkitd applies them.
pub fn gc_policy(cache: &Cache) -> Vec<GcPolicy> {
    let caps = gc_caps(cache);
    let reproducible = match caps.max_used {
        DiskSpace::Bytes(max) => max.min(REPRODUCIBLE_CAP),
        DiskSpace::Percent(_) => REPRODUCIBLE_CAP,
    };
    let capped = |all: bool, keep: Option<Duration>| GcPolicy {
        all,
        filters: Vec::new(),
        keep_duration: keep.map(go_duration),
        reserved_space: Some(caps.reserved),
        max_used_space: Some(caps.max_used),
        min_free_space: Some(caps.min_free),
    };
    vec![
        GcPolicy {
            all: false,
            filters: vec![
                "type==source.local",
                "type==exec.cachemount",
                "type==source.git.checkout",
            ],
            keep_duration: Some(go_duration(Duration::from_secs(48 * 3600))),
            reserved_space: None,
            max_used_space: Some(DiskSpace::Bytes(reproducible)),
            min_free_space: None,
        },
        capped(false, Some(Duration::from_days(60))),
        capped(false, None),
        capped(true, None),
    ]
}

/// A duration as Go's `time.ParseDuration` reads it: whole hours as `48h`, else seconds.
fn go_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else {
        format!("{secs}s")
    }
}

/// The whole file. Borrowed sections are written as the overlay spells them; sections with
/// durations are converted to Go's duration syntax.
#[derive(Serialize)]
struct File<'a> {
    #[serde(rename = "insecure-entitlements", skip_serializing_if = "<[_]>::is_empty")]
    insecure_entitlements: &'a [String],
    #[serde(rename = "proxyNetwork", skip_serializing_if = "Option::is_none")]
    proxy_network: Option<bool>,
    #[serde(rename = "provenanceEnvDir", skip_serializing_if = "Option::is_none")]
    provenance_env_dir: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<&'a Log>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns: Option<&'a Dns>,
    #[serde(skip_serializing_if = "Option::is_none")]
    otel: Option<&'a Otel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cdi: Option<&'a Cdi>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<HistoryToml>,
    worker: WorkerToml<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    registry: &'a BTreeMap<String, Registry>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    frontend: BTreeMap<&'static str, FrontendToml<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<SystemToml>,
}

#[derive(Serialize)]
struct HistoryToml {
    #[serde(rename = "maxAge", skip_serializing_if = "Option::is_none")]
    max_age: Option<String>,
    #[serde(rename = "maxEntries", skip_serializing_if = "Option::is_none")]
    max_entries: Option<u32>,
}

#[derive(Serialize)]
struct SystemToml {
    #[serde(rename = "platformsCacheMaxAge", skip_serializing_if = "Option::is_none")]
    platforms_cache_max_age: Option<String>,
    #[serde(rename = "maxRegistryConcurrency", skip_serializing_if = "Option::is_none")]
    max_registry_concurrency: Option<u32>,
}

/// A frontend's table. The section is written as a map: toml 0.9 leaves a struct field's
/// table name unquoted, and `[frontend.dockerfile.v0]` would be a different table.
#[derive(Serialize)]
struct FrontendToml<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(rename = "allowedRepositories", skip_serializing_if = "<[_]>::is_empty")]
    allowed_repositories: &'a [String],
}

#[derive(Serialize)]
struct WorkerToml<'a> {
    oci: OciToml<'a>,
}

/// `[worker.oci]`: kiln's GC, then the overlay's other settings (values before tables).
#[derive(Serialize)]
struct OciToml<'a> {
    gc: bool,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    platforms: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshotter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binary: Option<&'a str>,
    #[serde(rename = "apparmor-profile", skip_serializing_if = "Option::is_none")]
    apparmor_profile: Option<&'a str>,
    #[serde(rename = "max-parallelism", skip_serializing_if = "Option::is_none")]
    max_parallelism: Option<u32>,
    #[serde(rename = "cniPoolSize", skip_serializing_if = "Option::is_none")]
    cni_pool_size: Option<u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    gcpolicy: Vec<GcPolicy>,
}

/// buildkitd.toml could not be written.
#[derive(Debug, thiserror::Error)]
#[error("failed to write buildkitd.toml: {0}")]
pub struct TomlError(#[from] toml::ser::Error);

/// The rendered file and its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The TOML text.
    pub text: String,
    /// Lowercase hex SHA-256 of `text`.
    pub sha256: String,
}

/// Render buildkitd.toml for `cache` and the overlay's extra `config`.
pub fn render(cache: &Cache, config: &BuildkitdConfig) -> Result<Rendered, TomlError> {
    // Destructured in full, so a field added to the model cannot be forgotten here.
    let BuildkitdConfig {
        insecure_entitlements,
        proxy_network,
        provenance_env_dir,
        log,
        dns,
        otel,
        cdi,
        history,
        worker: Worker { oci },
        registry,
        frontend: Frontend { dockerfile, gateway },
        system,
    } = config;
    let mut frontends = BTreeMap::new();
    if let Some(DockerfileFrontend { enabled }) = dockerfile {
        frontends.insert(
            "dockerfile.v0",
            FrontendToml {
                enabled: *enabled,
                allowed_repositories: &[],
            },
        );
    }
    if let Some(GatewayFrontend {
        enabled,
        allowed_repositories,
    }) = gateway
    {
        frontends.insert(
            "gateway.v0",
            FrontendToml {
                enabled: *enabled,
                allowed_repositories,
            },
        );
    }
    let OciWorker {
        platforms,
        snapshotter,
        binary,
        apparmor_profile,
        max_parallelism,
        cni_pool_size,
        labels,
    } = oci;
    let file = File {
        insecure_entitlements,
        proxy_network: *proxy_network,
        provenance_env_dir: provenance_env_dir.as_deref(),
        log: log.as_ref(),
        dns: dns.as_ref(),
        otel: otel.as_ref(),
        cdi: cdi.as_ref(),
        history: history
            .as_ref()
            .map(|History { max_age, max_entries }| HistoryToml {
                max_age: max_age.map(go_duration),
                max_entries: *max_entries,
            }),
        worker: WorkerToml {
            oci: OciToml {
                gc: true,
                platforms,
                snapshotter: snapshotter.as_deref(),
                binary: binary.as_deref(),
                apparmor_profile: apparmor_profile.as_deref(),
                max_parallelism: *max_parallelism,
                cni_pool_size: *cni_pool_size,
                labels,
                gcpolicy: gc_policy(cache),
            },
        },
        registry,
        frontend: frontends,
        system: system.as_ref().map(
            |System {
                 platforms_cache_max_age,
                 max_registry_concurrency,
             }| SystemToml {
                platforms_cache_max_age: platforms_cache_max_age.map(go_duration),
                max_registry_concurrency: *max_registry_concurrency,
            },
        ),
    };
    let text = format!(
        "# Rendered by kiln from buildkit.cache and buildkit.config. GC caps derive from the cache size.\n{}",
        toml::to_string(&file)?
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Rendered { text, sha256 })
}

/// The ConfigMap holding `rendered` under [`FILE`]. Wave -2, so it exists before the pods.
pub fn config_map(meta: &Meta, rendered: &Rendered) -> ConfigMap {
    ConfigMap {
        metadata: meta.object(&config_map_name(meta), Component::Daemon, Wave::Setup),
        data: Some(BTreeMap::from([(FILE.to_string(), rendered.text.clone())])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::CacheVolume;

    fn cache(size: &str) -> Cache {
        Cache {
            volume: CacheVolume::Persistent,
            size: size.into(),
            storage_class: String::new(),
        }
    }

    #[test]
    fn caps_derive_from_the_volume_in_bytes() {
        let caps = gc_caps(&cache("100Gi"));
        let s = 100u64 << 30;
        assert_eq!(caps.max_used, DiskSpace::Bytes(s / 4 * 3));
        assert_eq!(caps.min_free, DiskSpace::Bytes(s / 5));
        assert_eq!(caps.reserved, DiskSpace::Bytes(s / 10));
        let unlimited = gc_caps(&Cache::default());
        assert_eq!(unlimited.max_used, DiskSpace::Percent(80));
    }

    #[test]
    fn small_volumes_cap_rule_one_at_max_used() {
        let policy = gc_policy(&cache("1Gi"));
        assert_eq!(policy[0].max_used_space, Some(DiskSpace::Bytes(REPRODUCIBLE_CAP)));
        assert_eq!(policy.len(), 4);
        assert!(policy[3].all);
        assert_eq!(policy[1].keep_duration.as_deref(), Some("1440h"));
    }

    #[test]
    fn same_input_same_bytes_and_checksum_follows_text() {
        let a = render(&cache("10Gi"), &BuildkitdConfig::default()).unwrap();
        assert_eq!(a, render(&cache("10Gi"), &BuildkitdConfig::default()).unwrap());
        let b = render(&cache("20Gi"), &BuildkitdConfig::default()).unwrap();
        assert_ne!(a.sha256, b.sha256);
        assert_eq!(a.sha256.len(), 64);
    }

    #[test]
    fn every_section_reads_back_under_buildkits_key_names() {
        use crate::overlay::*;
        let config = BuildkitdConfig {
            insecure_entitlements: vec!["network.host".into()],
            proxy_network: Some(true),
            provenance_env_dir: Some("/etc/buildkit/provenance.d".into()),
            log: Some(Log {
                format: Some(LogFormat::Json),
                level: Some(LogLevel::Debug),
            }),
            dns: Some(Dns {
                nameservers: vec!["1.1.1.1".into()],
                options: vec!["edns0".into()],
                search_domains: vec!["example.com".into()],
            }),
            otel: Some(Otel {
                socket_path: Some("/run/otel.sock".into()),
            }),
            cdi: Some(Cdi {
                disabled: Some(true),
                spec_dirs: vec!["/etc/cdi".into()],
            }),
            history: Some(History {
                max_age: Some(Duration::from_days(7)),
                max_entries: Some(100),
            }),
            worker: Worker {
                oci: OciWorker {
                    platforms: vec!["linux/amd64".into()],
                    snapshotter: Some("overlayfs".into()),
                    binary: Some("crun".into()),
                    apparmor_profile: Some("builds".into()),
                    max_parallelism: Some(4),
                    cni_pool_size: Some(16),
                    labels: BTreeMap::from([("pool".into(), "fast".into())]),
                },
            },
            registry: BTreeMap::from([(
                "docker.io".into(),
                Registry {
                    mirrors: vec!["mirror.gcr.io".into()],
                    http: Some(false),
                    insecure: None,
                    ca: vec!["/etc/ca.pem".into()],
                    keypair: vec![KeyPair {
                        key: "/k.pem".into(),
                        cert: "/c.pem".into(),
                    }],
                },
            )]),
            frontend: Frontend {
                dockerfile: Some(DockerfileFrontend { enabled: Some(true) }),
                gateway: Some(GatewayFrontend {
                    enabled: Some(true),
                    allowed_repositories: vec!["docker/dockerfile".into()],
                }),
            },
            system: Some(System {
                platforms_cache_max_age: Some(Duration::from_secs(3600)),
                max_registry_concurrency: Some(8),
            }),
        };
        let text = render(&cache("10Gi"), &config).unwrap().text;
        let file: toml::Table = toml::from_str(&text).unwrap();
        let at = |path: &str| -> toml::Value {
            let mut value = toml::Value::Table(file.clone());
            for key in path.split('/') {
                value = value
                    .get(key)
                    .unwrap_or_else(|| panic!("{path} in\n{text}"))
                    .clone();
            }
            value
        };
        assert_eq!(at("insecure-entitlements").as_array().unwrap().len(), 1);
        assert_eq!(at("proxyNetwork").as_bool(), Some(true));
        assert_eq!(at("log/format").as_str(), Some("json"));
        assert_eq!(at("dns/searchDomains").as_array().unwrap().len(), 1);
        assert_eq!(at("otel/socketPath").as_str(), Some("/run/otel.sock"));
        assert_eq!(at("cdi/specDirs").as_array().unwrap().len(), 1);
        assert_eq!(at("history/maxAge").as_str(), Some("168h"));
        assert_eq!(at("worker/oci/gc").as_bool(), Some(true));
        assert_eq!(at("worker/oci/max-parallelism").as_integer(), Some(4));
        assert_eq!(at("worker/oci/apparmor-profile").as_str(), Some("builds"));
        assert_eq!(at("worker/oci/labels/pool").as_str(), Some("fast"));
        assert_eq!(at("worker/oci/gcpolicy").as_array().unwrap().len(), 4);
        assert_eq!(at("registry/docker.io/keypair").as_array().unwrap().len(), 1);
        assert_eq!(at("frontend/dockerfile.v0/enabled").as_bool(), Some(true));
        assert_eq!(
            at("frontend/gateway.v0/allowedRepositories")
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(at("system/platformsCacheMaxAge").as_str(), Some("1h"));
        assert_eq!(at("system/maxRegistryConcurrency").as_integer(), Some(8));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_days(2)), "48h");
        assert_eq!(go_duration(Duration::from_secs(90)), "90s");
    }
}
