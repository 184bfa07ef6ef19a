//! The buildkitd daemon: ServiceAccount, Deployment or StatefulSet, Services, PDB,
//! and the cache PVC of a single-replica Deployment.
//!
//! Restarts (every certificate renewal) are made invisible to builds: the pod drains before
//! it stops (`drain`), a Deployment surges before it removes a pod, and a persistent cache
//! outlives the pod.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    AppArmorProfile, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, ExecAction,
    KeyToPath, Lifecycle, LocalObjectReference, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::buildkitd::{self, Rendered};
use super::checkov::{self, Skip};
use super::drain;
use super::meta::{self, Component, Meta, POD_SECURITY_NOTE, Wave};
use crate::overlay::{CacheVolume, Mode, RestartStrategy, Workload, pinned};

/// A free-text note on an object, for choices a reader would otherwise wonder about.
pub const NOTE: &str = "kiln.dev/note";

/// The uid and gid the rootless image runs as (fixed by the image).
const ROOTLESS_UID: i64 = 1000;
/// Where the daemon Secret is mounted.
const CERTS_DIR: &str = "/certs";
/// The daemon container's name.
const CONTAINER: &str = "buildkitd";
/// The cache volume's name, and the volumeClaimTemplate's (PVCs `cache-<pod>`).
const CACHE_VOLUME: &str = "cache";
/// The buildkitd.toml volume's name.
const CONFIG_VOLUME: &str = "config";

/// The daemon's ServiceAccount. It holds no RBAC: buildkitd never talks to the API.
pub fn service_account(meta: &Meta) -> ServiceAccount {
    ServiceAccount {
        metadata: meta.object(
            &meta.overlay.buildkit.service_name,
            Component::Daemon,
            Wave::Setup,
        ),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// The unix socket buildkitd listens on in this mode (the probes use it).
pub fn unix_socket(mode: Mode) -> &'static str {
    match mode {
        Mode::Rootless => "unix:///run/user/1000/buildkit/buildkitd.sock",
        Mode::Privileged | Mode::Userns => "unix:///run/buildkit/buildkitd.sock",
    }
}

/// The rootless BuildKit image, `<image>:<version>-rootless` (the rootless daemon's and the
/// daemonless Task's), without digest.
pub fn rootless_image(meta: &Meta) -> String {
    let buildkit = &meta.overlay.buildkit;
    format!("{}:{}-rootless", buildkit.image, buildkit.version)
}

/// The daemon image reference: `<image>:<version>`, with `-rootless` in rootless mode, and
/// `@<buildkit.digest>` when one is set (the tag stays, for readers).
pub fn daemon_image(meta: &Meta) -> String {
    let buildkit = &meta.overlay.buildkit;
    let tagged = match buildkit.mode {
        Mode::Rootless => rootless_image(meta),
        Mode::Privileged | Mode::Userns => format!("{}:{}", buildkit.image, buildkit.version),
    };
    pinned(&tagged, &buildkit.digest)
}

/// The buildkitd command line.
pub fn daemon_args(meta: &Meta) -> Vec<String> {
    let buildkit = &meta.overlay.buildkit;
    let (ca, cert, key) = meta.overlay.certs.format.key_names();
    let mut args = vec![
        "--addr".to_string(),
        unix_socket(buildkit.mode).to_string(),
        "--addr".to_string(),
        format!("tcp://0.0.0.0:{}", buildkit.port),
        "--tlscacert".to_string(),
        format!("{CERTS_DIR}/{ca}"),
        "--tlscert".to_string(),
        format!("{CERTS_DIR}/{cert}"),
        "--tlskey".to_string(),
        format!("{CERTS_DIR}/{key}"),
        // The default path, made explicit: buildkitd then fails on a missing file instead of
        // silently running without kiln's GC caps.
        "--config".to_string(),
        format!("{}/{}", buildkitd::config_dir(buildkit.mode), buildkitd::FILE),
    ];
    if buildkit.mode == Mode::Rootless {
        args.push("--oci-worker-no-process-sandbox".to_string());
    }
    args.extend(buildkit.extra_args.iter().cloned());
    args
}

fn probe(mode: Mode) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(
                ["buildctl", "--addr", unix_socket(mode), "debug", "workers"]
                    .map(String::from)
                    .to_vec(),
            ),
        }),
        initial_delay_seconds: Some(5),
        period_seconds: Some(30),
        ..Default::default()
    }
}

/// Where buildkitd keeps its state in `mode` (the cache volume is mounted there).
pub(super) fn state_dir(mode: Mode) -> &'static str {
    match mode {
        Mode::Rootless => "/home/user/.local/share/buildkit",
        Mode::Privileged | Mode::Userns => "/var/lib/buildkit",
    }
}

/// The buildkitd container's security context for `mode` (the daemonless Tekton step
/// runs rootless buildkitd too, so it shares this).
pub(super) fn container_security(mode: Mode) -> SecurityContext {
    match mode {
        // rootlesskit creates user and mount namespaces through the setuid newuidmap helpers,
        // which is why privilege escalation stays allowed and capabilities are not dropped.
        Mode::Rootless => SecurityContext {
            run_as_user: Some(ROOTLESS_UID),
            run_as_group: Some(ROOTLESS_UID),
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "Unconfined".into(),
                ..Default::default()
            }),
            app_armor_profile: Some(AppArmorProfile {
                type_: "Unconfined".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Mode::Privileged | Mode::Userns => SecurityContext {
            privileged: Some(true),
            ..Default::default()
        },
    }
}

/// The pod's imagePullSecrets from a list of Secret names (None when empty).
pub(super) fn pull_secrets(names: &[String]) -> Option<Vec<LocalObjectReference>> {
    (!names.is_empty()).then(|| {
        names
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    })
}

/// Why buildkitd gets no CPU limit (CKV_K8S_11), unless the overlay sets one.
pub(super) const NO_CPU_LIMIT: &str = "no CPU limit on purpose: a CPU quota throttles builds, which run many \
     processes in bursts; buildkit.resources.requests.cpu reserves the share, and buildkit.resources.limits.cpu \
     sets a limit";

/// The checkov checks a buildkitd container in `mode` fails on purpose, with the same
/// reasons as its `kiln.dev/pod-security` note (the daemonless Task's step runs the
/// rootless daemon, so it shares the rootless list).
pub(super) fn mode_skips(mode: Mode) -> Vec<Skip> {
    let writable_root = "buildkitd writes runtime state outside its volumes (/run, /tmp), as in BuildKit's own \
                         manifests; the build cache is on the cache volume";
    let list: &[(&'static str, &str)] = match mode {
        Mode::Rootless => &[
            (
                "CKV_K8S_20",
                "rootless BuildKit: rootlesskit runs the setuid newuidmap and newgidmap to map the user namespace, \
                 which needs privilege escalation",
            ),
            ("CKV_K8S_22", writable_root),
            (
                "CKV_K8S_28",
                "rootless BuildKit: capabilities are not dropped, newuidmap and newgidmap need theirs to set up \
                 the user namespace",
            ),
            (
                "CKV_K8S_31",
                "rootless BuildKit: seccomp and AppArmor are Unconfined because the RuntimeDefault profiles block \
                 the unshare and mount calls that create the build's namespaces",
            ),
            (
                "CKV_K8S_37",
                "rootless BuildKit: capabilities are not dropped, newuidmap and newgidmap need theirs to set up \
                 the user namespace",
            ),
            (
                "CKV_K8S_40",
                "rootless BuildKit: uid 1000 is fixed by the moby/buildkit rootless image and its subuid ranges",
            ),
        ],
        Mode::Privileged => &[
            (
                "CKV_K8S_16",
                "privileged-mode BuildKit: the OCI worker needs privileged: true to create build containers; \
                 use mode rootless or userns to avoid it",
            ),
            (
                "CKV_K8S_20",
                "privileged-mode BuildKit: privileged: true implies privilege escalation",
            ),
            ("CKV_K8S_22", writable_root),
            ("CKV_K8S_23", "privileged-mode BuildKit runs as root"),
            (
                "CKV_K8S_28",
                "privileged-mode BuildKit: privileged: true grants every capability",
            ),
            (
                "CKV_K8S_31",
                "privileged-mode BuildKit: a privileged container is not confined by seccomp",
            ),
            (
                "CKV_K8S_37",
                "privileged-mode BuildKit: privileged: true grants every capability",
            ),
            ("CKV_K8S_40", "privileged-mode BuildKit runs as root (uid 0)"),
        ],
        Mode::Userns => &[
            (
                "CKV_K8S_16",
                "userns BuildKit: privileged: true applies inside the pod's own user namespace (hostUsers: false), \
                 so root in the pod is not root on the node",
            ),
            (
                "CKV_K8S_20",
                "userns BuildKit: privileged: true implies privilege escalation, inside the pod's user namespace",
            ),
            ("CKV_K8S_22", writable_root),
            (
                "CKV_K8S_23",
                "userns BuildKit runs as root inside the pod's user namespace only (hostUsers: false)",
            ),
            (
                "CKV_K8S_28",
                "userns BuildKit: privileged: true grants every capability, inside the pod's user namespace",
            ),
            (
                "CKV_K8S_31",
                "userns BuildKit: a privileged container is not confined by seccomp",
            ),
            (
                "CKV_K8S_37",
                "userns BuildKit: privileged: true grants every capability, inside the pod's user namespace",
            ),
        ],
    };
    list.iter()
        .map(|(check, reason)| Skip::new(check, *reason))
        .collect()
}

/// Every checkov check the daemon workload fails on purpose.
fn daemon_skips(meta: &Meta) -> Vec<Skip> {
    let buildkit = &meta.overlay.buildkit;
    let mut skips = checkov::no_cpu_limit(&buildkit.resources, NO_CPU_LIMIT);
    skips.extend(mode_skips(buildkit.mode));
    skips.extend(checkov::unpinned(
        "the BuildKit image",
        &daemon_image(meta),
        "buildkit.digest",
    ));
    skips
}

/// Why this mode cannot meet the restricted (or even baseline) Pod Security Standard.
pub fn pod_security_reason(mode: Mode) -> &'static str {
    match mode {
        Mode::Rootless => {
            "privileged: rootless BuildKit runs as uid 1000 but needs Unconfined seccomp and AppArmor \
             (and setuid newuidmap) to create user namespaces; baseline forbids Unconfined profiles"
        }
        Mode::Privileged => {
            "privileged: privileged-mode BuildKit runs as root with privileged: true; \
             use mode rootless or userns to reduce this"
        }
        Mode::Userns => {
            "privileged: userns BuildKit sets privileged: true inside its own user namespace \
             (hostUsers: false), so root in the pod is not root on the node"
        }
    }
}

fn pod_template(meta: &Meta, config: &Rendered) -> PodTemplateSpec {
    let overlay = meta.overlay;
    let buildkit = &overlay.buildkit;
    let mode = buildkit.mode;
    let (ca, cert, key) = overlay.certs.format.key_names();
    let container = Container {
        name: CONTAINER.into(),
        image: Some(daemon_image(meta)),
        args: Some(daemon_args(meta)),
        ports: Some(vec![ContainerPort {
            name: Some("buildkitd".into()),
            container_port: i32::from(buildkit.port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(probe(mode)),
        liveness_probe: Some(probe(mode)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(drain::pre_stop(overlay, unix_socket(mode))),
            ..Default::default()
        }),
        resources: meta::resources(&buildkit.resources),
        security_context: Some(container_security(mode)),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "certs".into(),
                mount_path: CERTS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: CONFIG_VOLUME.into(),
                mount_path: buildkitd::config_dir(mode).into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: CACHE_VOLUME.into(),
                mount_path: state_dir(mode).into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    // Listing the keys makes the kubelet hold the pod in ContainerCreating until the
    // bootstrap Job has written them, instead of crash-looping on an empty Secret.
    let items = [ca, cert, key]
        .map(|name| KeyToPath {
            key: name.into(),
            path: name.into(),
            ..Default::default()
        })
        .to_vec();
    let (default_mode, pod_security) = match mode {
        // fsGroup lets uid 1000 read the Secret files, which stay out of reach of others.
        Mode::Rootless => (
            0o440,
            PodSecurityContext {
                fs_group: Some(ROOTLESS_UID),
                ..Default::default()
            },
        ),
        // Root on purpose, and said so: (userns) root inside the pod's user namespace only.
        Mode::Privileged | Mode::Userns => (
            0o400,
            PodSecurityContext {
                run_as_user: Some(0),
                run_as_group: Some(0),
                run_as_non_root: Some(false),
                ..Default::default()
            },
        ),
    };
    let mut volumes = vec![
        Volume {
            name: "certs".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(overlay.certs.secrets.daemon.clone()),
                items: Some(items),
                default_mode: Some(default_mode),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: buildkitd::config_map_name(meta),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    // A persistent StatefulSet gets its cache from volumeClaimTemplates instead.
    match (buildkit.cache.volume, buildkit.workload) {
        (CacheVolume::EmptyDir, _) => volumes.push(Volume {
            name: CACHE_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: cache_quantity(meta),
                ..Default::default()
            }),
            ..Default::default()
        }),
        (CacheVolume::Persistent, Workload::Deployment) => volumes.push(Volume {
            name: CACHE_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: cache_claim_name(meta),
                ..Default::default()
            }),
            ..Default::default()
        }),
        (CacheVolume::Persistent, Workload::Statefulset) => {}
    }
    let mut metadata = meta.pod_template(Component::Daemon);
    metadata.annotations = Some(BTreeMap::from([(
        buildkitd::CHECKSUM_ANNOTATION.to_string(),
        config.sha256.clone(),
    )]));
    PodTemplateSpec {
        metadata: Some(metadata),
        spec: Some(PodSpec {
            service_account_name: Some(buildkit.service_name.clone()),
            // buildkitd never talks to the API server.
            automount_service_account_token: Some(false),
            image_pull_secrets: pull_secrets(&buildkit.image_pull_secrets),
            termination_grace_period_seconds: Some(overlay.termination_grace().as_secs()),
            host_users: (mode == Mode::Userns).then_some(false),
            security_context: Some(pod_security),
            containers: vec![container],
            volumes: Some(volumes),
            node_selector: meta::non_empty(&buildkit.node_selector),
            tolerations: meta::tolerations(&buildkit.tolerations),
            ..Default::default()
        }),
    }
}

/// How this workload picks up renewed certificates (buildkitd reads its TLS files only at start).
fn restart_note(strategy: RestartStrategy) -> &'static str {
    match strategy {
        RestartStrategy::Rollout => {
            "kiln rotate restarts this workload after a renewal by patching kiln.dev/restartedAt \
             into the pod template (buildkitd reads its TLS files only at start)"
        }
        RestartStrategy::None => {
            "rotation.restartStrategy is none: restart this workload yourself after kiln rotate \
             renews its certificates (buildkitd reads its TLS files only at start)"
        }
    }
}

/// How a stop is drained, on the workload.
fn drain_note(meta: &Meta) -> String {
    let overlay = meta.overlay;
    format!(
        "preStop waits until buildctl debug histories shows no active build (polling every {}s, at most {}s), \
         so a restart never aborts a build; terminationGracePeriodSeconds {} is tekton.timeout {} plus {}",
        drain::POLL.as_secs(),
        drain::bound(overlay).as_secs(),
        overlay.termination_grace().as_secs(),
        overlay.tekton.timeout,
        crate::overlay::DRAIN_MARGIN,
    )
}

/// What happens to the cache on a restart, on the workload.
fn cache_note(meta: &Meta) -> &'static str {
    let buildkit = &meta.overlay.buildkit;
    match (buildkit.cache.volume, buildkit.workload) {
        (CacheVolume::EmptyDir, _) => {
            "emptyDir: the cache is lost on every restart, each certificate renewal included; \
             set buildkit.cache.volume: persistent to keep it"
        }
        (CacheVolume::Persistent, Workload::Statefulset) => {
            "one PVC per replica (cache-<pod>). persistentVolumeClaimRetentionPolicy keeps them: on scale-down \
             (whenScaled: Retain) because a replica that comes back gets the same repositories back from \
             rendezvous hashing and starts warm; on delete (whenDeleted: Retain) because changing \
             volumeClaimTemplates or the selector means deleting and recreating the StatefulSet, which \
             adopts them again by name. To remove a farm for good, delete its PVCs by label app.kubernetes.io/instance"
        }
        (CacheVolume::Persistent, Workload::Deployment) => {
            "one PVC (<serviceName>-cache) and the Recreate strategy: two buildkitd must never share one \
             state directory, so the old pod drains and exits before the new one starts; builds in flight \
             finish, new ones wait for the new pod. A StatefulSet with 2+ replicas has no such gap"
        }
    }
}

fn daemon_metadata(meta: &Meta) -> ObjectMeta {
    let mut metadata = meta.object(&meta.overlay.buildkit.service_name, Component::Daemon, Wave::App);
    let drain = drain_note(meta);
    meta::annotate(
        &mut metadata,
        &[
            (POD_SECURITY_NOTE, pod_security_reason(meta.overlay.buildkit.mode)),
            (
                "kiln.dev/restart",
                restart_note(meta.overlay.rotation.restart_strategy),
            ),
            ("kiln.dev/drain", &drain),
            ("kiln.dev/cache", cache_note(meta)),
        ],
    );
    checkov::annotate(&mut metadata, &daemon_skips(meta));
    metadata
}

/// `buildkit.cache.size` as a quantity (None when unset).
fn cache_quantity(meta: &Meta) -> Option<Quantity> {
    let size = &meta.overlay.buildkit.cache.size;
    (!size.is_empty()).then(|| Quantity(size.clone()))
}

/// The name of a single-replica Deployment's cache PVC: `<serviceName>-cache`.
fn cache_claim_name(meta: &Meta) -> String {
    format!("{}-{CACHE_VOLUME}", meta.overlay.buildkit.service_name)
}

fn cache_claim_spec(meta: &Meta) -> PersistentVolumeClaimSpec {
    let cache = &meta.overlay.buildkit.cache;
    PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        resources: Some(VolumeResourceRequirements {
            requests: cache_quantity(meta).map(|q| BTreeMap::from([("storage".to_string(), q)])),
            ..Default::default()
        }),
        storage_class_name: (!cache.storage_class.is_empty()).then(|| cache.storage_class.clone()),
        ..Default::default()
    }
}

/// The cache PVC of a Deployment with `buildkit.cache.volume: persistent` (validation
/// allows at most one replica). GitOps tools keep it when the Application or Kustomization
/// goes, as a StatefulSet's retention policy does.
pub fn persistent_volume_claim(meta: &Meta) -> Option<PersistentVolumeClaim> {
    let buildkit = &meta.overlay.buildkit;
    (buildkit.cache.volume == CacheVolume::Persistent && buildkit.workload == Workload::Deployment).then(|| {
        let mut metadata = meta.object(&cache_claim_name(meta), Component::Daemon, Wave::Setup);
        meta::annotate(
            &mut metadata,
            &[
                ("argocd.argoproj.io/sync-options", "Delete=false"),
                ("kustomize.toolkit.fluxcd.io/prune", "disabled"),
                (
                    NOTE,
                    "the build cache of the buildkitd Deployment; kept when the Application or Kustomization \
                     is deleted so a re-created farm starts warm; delete it by hand to free the space",
                ),
            ],
        );
        PersistentVolumeClaim {
            metadata,
            spec: Some(cache_claim_spec(meta)),
            ..Default::default()
        }
    })
}

fn replicas(meta: &Meta) -> i32 {
    i32::try_from(meta.overlay.buildkit.replicas).unwrap_or(i32::MAX)
}

/// The daemon as a Deployment (any replica serves any build).
///
/// It rolls with `maxSurge: 1, maxUnavailable: 0`: a new pod is ready before an old one
/// starts draining, so capacity never drops. With a persistent cache (one replica, one
/// volume) it uses `Recreate` instead, so two daemons never share one state directory.
pub fn deployment(meta: &Meta, config: &Rendered) -> Deployment {
    let strategy = match meta.overlay.buildkit.cache.volume {
        CacheVolume::EmptyDir => DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        },
        CacheVolume::Persistent => DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        },
    };
    Deployment {
        metadata: daemon_metadata(meta),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas(meta)),
            selector: meta.selector(Component::Daemon),
            strategy: Some(strategy),
            template: pod_template(meta, config),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The daemon as a StatefulSet: stable names `<service>-<i>.<service>.<ns>.svc` for cache affinity.
///
/// It rolls one pod at a time (`RollingUpdate`, set explicitly): while one drains, `kiln build`
/// falls over to the next replica in the rendezvous order. A persistent cache is one PVC per replica from
/// `volumeClaimTemplates`, kept on scale-down and on delete (see the `kiln.dev/cache` note).
pub fn stateful_set(meta: &Meta, config: &Rendered) -> StatefulSet {
    let persistent = meta.overlay.buildkit.cache.volume == CacheVolume::Persistent;
    let claim = || PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(CACHE_VOLUME.into()),
            // Selector labels only: Kubernetes refuses any later change to a claim template,
            // and the version label changes with every BuildKit upgrade.
            labels: Some(meta.selector_labels(Component::Daemon)),
            ..Default::default()
        },
        spec: Some(cache_claim_spec(meta)),
        ..Default::default()
    };
    StatefulSet {
        metadata: daemon_metadata(meta),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas(meta)),
            service_name: Some(meta.overlay.buildkit.service_name.clone()),
            pod_management_policy: Some("Parallel".into()),
            selector: meta.selector(Component::Daemon),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: None,
            }),
            template: pod_template(meta, config),
            volume_claim_templates: persistent.then(|| vec![claim()]),
            persistent_volume_claim_retention_policy: persistent.then(|| {
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                }
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Service named `buildkit.serviceName`.
///
/// For a Deployment it is a ClusterIP Service. For a StatefulSet it is the headless
/// governing Service: it gives each replica the name `<service>-<i>.<service>.<ns>.svc`,
/// which the daemon certificate's `*.<service>.<ns>.svc` SAN covers, and `<service>.<ns>.svc`
/// still resolves to every ready replica. A second load-balanced Service would need a
/// name the certificate does not carry, so there is none.
pub fn service(meta: &Meta) -> Service {
    let buildkit = &meta.overlay.buildkit;
    let headless = buildkit.workload == Workload::Statefulset;
    let mut metadata = meta.object(&buildkit.service_name, Component::Daemon, Wave::App);
    if headless {
        meta::annotate(
            &mut metadata,
            &[(
                NOTE,
                "headless governing Service of the StatefulSet: per-replica DNS <pod>.<service>.<ns>.svc \
                 for kiln build's consistent hashing; the service name itself resolves to all ready replicas",
            )],
        );
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: headless.then(|| "None".to_string()),
            selector: Some(meta.selector_labels(Component::Daemon)),
            ports: Some(vec![ServicePort {
                name: Some("buildkitd".into()),
                port: i32::from(buildkit.port),
                target_port: Some(IntOrString::String("buildkitd".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A PodDisruptionBudget (maxUnavailable 1), rendered only when replicas > 1.
pub fn pod_disruption_budget(meta: &Meta) -> Option<PodDisruptionBudget> {
    (meta.overlay.buildkit.replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta.object(&meta.overlay.buildkit.service_name, Component::Daemon, Wave::App),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(meta.selector(Component::Daemon)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::Overlay;
    use crate::pki::SecretFormat;

    fn with(mode: Mode, f: impl FnOnce(&mut Overlay)) -> Overlay {
        let mut overlay = Overlay::default();
        overlay.buildkit.mode = mode;
        f(&mut overlay);
        overlay
    }

    fn config(overlay: &Overlay) -> Rendered {
        buildkitd::render(&overlay.buildkit.cache, &overlay.buildkit.config).unwrap()
    }

    fn pod(overlay: &Overlay) -> PodSpec {
        let meta = Meta {
            overlay,
            instance: "dev",
        };
        deployment(&meta, &config(overlay))
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    #[test]
    fn rootless_uses_rootless_image_uid_and_unconfined_fields() {
        let overlay = with(Mode::Rootless, |o| o.buildkit.cache.size = "20Gi".into());
        let spec = pod(&overlay);
        let c = &spec.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("docker.io/moby/buildkit:v0.32.2-rootless")
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(1000));
        assert_eq!(sc.run_as_group, Some(1000));
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "Unconfined");
        assert_eq!(sc.app_armor_profile.as_ref().unwrap().type_, "Unconfined");
        assert_eq!(sc.privileged, None);
        let args = c.args.as_ref().unwrap();
        assert!(args.contains(&"--oci-worker-no-process-sandbox".to_string()));
        assert_eq!(args[1], "unix:///run/user/1000/buildkit/buildkitd.sock");
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == "/home/user/.local/share/buildkit")
        );
        let state = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "cache")
            .unwrap();
        assert_eq!(
            state.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("20Gi".into()))
        );
        assert_eq!(spec.host_users, None);
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    #[test]
    fn privileged_and_userns_run_privileged_with_var_lib_state() {
        for mode in [Mode::Privileged, Mode::Userns] {
            let overlay = with(mode, |_| {});
            let spec = pod(&overlay);
            let c = &spec.containers[0];
            assert_eq!(c.image.as_deref(), Some("docker.io/moby/buildkit:v0.32.2"));
            assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
            assert_eq!(c.args.as_ref().unwrap()[1], "unix:///run/buildkit/buildkitd.sock");
            assert!(
                !c.args
                    .as_ref()
                    .unwrap()
                    .contains(&"--oci-worker-no-process-sandbox".to_string())
            );
            assert!(
                c.volume_mounts
                    .as_ref()
                    .unwrap()
                    .iter()
                    .any(|m| m.mount_path == "/var/lib/buildkit")
            );
            assert_eq!(spec.host_users, (mode == Mode::Userns).then_some(false));
        }
    }

    #[test]
    fn args_use_format_key_names_and_extra_args_last() {
        let overlay = with(Mode::Privileged, |o| {
            o.certs.format = SecretFormat::Tls;
            o.buildkit.port = 4321;
            o.buildkit.extra_args = vec!["--debug".into()];
        });
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let args = daemon_args(&meta);
        assert_eq!(
            args,
            [
                "--addr",
                "unix:///run/buildkit/buildkitd.sock",
                "--addr",
                "tcp://0.0.0.0:4321",
                "--tlscacert",
                "/certs/ca.crt",
                "--tlscert",
                "/certs/tls.crt",
                "--tlskey",
                "/certs/tls.key",
                "--config",
                "/etc/buildkit/buildkitd.toml",
                "--debug"
            ]
        );
    }

    #[test]
    fn probes_talk_to_the_unix_socket() {
        let overlay = with(Mode::Rootless, |_| {});
        let spec = pod(&overlay);
        let probe = spec.containers[0].readiness_probe.clone().unwrap();
        assert_eq!(
            probe.exec.unwrap().command.unwrap(),
            [
                "buildctl",
                "--addr",
                "unix:///run/user/1000/buildkit/buildkitd.sock",
                "debug",
                "workers"
            ]
        );
        assert_eq!(probe.initial_delay_seconds, Some(5));
        assert_eq!(probe.period_seconds, Some(30));
    }

    #[test]
    fn statefulset_service_is_headless_and_governing() {
        let overlay = with(Mode::Rootless, |o| {
            o.buildkit.workload = Workload::Statefulset;
            o.buildkit.replicas = 3;
        });
        let meta = Meta {
            overlay: &overlay,
            instance: "prod",
        };
        let sts = stateful_set(&meta, &config(&overlay));
        let svc = service(&meta);
        assert_eq!(sts.spec.as_ref().unwrap().service_name, svc.metadata.name);
        assert_eq!(svc.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"));
        let pdb = pod_disruption_budget(&meta).unwrap();
        assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn single_replica_has_no_pdb_and_a_cluster_ip_service() {
        let overlay = with(Mode::Rootless, |_| {});
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        assert!(pod_disruption_budget(&meta).is_none());
        assert_eq!(service(&meta).spec.unwrap().cluster_ip, None);
    }

    const DIGEST: &str = "sha256:28a898719c18a33f4e8000685287fa36fd0dd9560c6440227d3a732d79bb41d8";

    fn skipped(overlay: &Overlay) -> Vec<String> {
        let meta = Meta {
            overlay,
            instance: "dev",
        };
        checkov::skipped(deployment(&meta, &config(overlay)).metadata.annotations.as_ref())
    }

    #[test]
    fn a_digest_pins_the_image_and_keeps_the_tag() {
        let overlay = with(Mode::Privileged, |o| {
            o.buildkit.digest = DIGEST.into();
            o.buildkit.image_pull_secrets = vec!["mirror-pull".into(), "other".into()];
        });
        let spec = pod(&overlay);
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some(format!("docker.io/moby/buildkit:v0.32.2@{DIGEST}").as_str())
        );
        let secrets: Vec<_> = spec
            .image_pull_secrets
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(secrets, ["mirror-pull", "other"]);
        assert!(!skipped(&overlay).contains(&"CKV_K8S_43".to_string()));
        assert!(!skipped(&overlay).contains(&"CKV_K8S_15".to_string()));

        let overlay = with(Mode::Rootless, |_| {});
        assert_eq!(pod(&overlay).image_pull_secrets, None);
        let skipped = skipped(&overlay);
        assert!(skipped.contains(&"CKV_K8S_43".to_string()), "{skipped:?}");
    }

    #[test]
    fn each_mode_skips_what_it_fails_on_purpose() {
        let checks = |mode| {
            let mut c: Vec<_> = mode_skips(mode).into_iter().map(|s| s.check).collect();
            c.sort();
            c
        };
        let privileged = [
            "CKV_K8S_16",
            "CKV_K8S_20",
            "CKV_K8S_22",
            "CKV_K8S_23",
            "CKV_K8S_28",
            "CKV_K8S_31",
            "CKV_K8S_37",
            "CKV_K8S_40",
        ];
        assert_eq!(checks(Mode::Privileged), privileged);
        // hostUsers: false passes the high-uid check.
        assert_eq!(
            checks(Mode::Userns),
            privileged
                .iter()
                .filter(|c| **c != "CKV_K8S_40")
                .copied()
                .collect::<Vec<_>>()
        );
        // Rootless runs as uid 1000, not privileged.
        assert_eq!(
            checks(Mode::Rootless),
            [
                "CKV_K8S_20",
                "CKV_K8S_22",
                "CKV_K8S_28",
                "CKV_K8S_31",
                "CKV_K8S_37",
                "CKV_K8S_40"
            ]
        );
        // A CPU limit in the overlay drops the CPU skip.
        let overlay = with(Mode::Rootless, |_| {});
        assert!(skipped(&overlay).contains(&"CKV_K8S_11".to_string()));
        let overlay = with(Mode::Rootless, |o| {
            o.buildkit.resources.limits.insert("cpu".into(), "4".into());
        });
        assert!(!skipped(&overlay).contains(&"CKV_K8S_11".to_string()));
    }

    #[test]
    fn every_mode_explains_its_pod_security_exemption() {
        for mode in [Mode::Rootless, Mode::Privileged, Mode::Userns] {
            let overlay = with(mode, |_| {});
            let meta = Meta {
                overlay: &overlay,
                instance: "dev",
            };
            let annotations = deployment(&meta, &config(&overlay)).metadata.annotations.unwrap();
            assert!(annotations[POD_SECURITY_NOTE].starts_with("privileged: "));
        }
    }
}
