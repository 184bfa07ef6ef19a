//! The overlay model: typed, strict per-environment settings.
//!
//! An overlay file holds a subset of [`Overlay`]; `extends:` chains are deep-merged
//! (maps merge, lists replace) before the result is read into these types.
//! Every field has a default, so an empty file is a valid overlay.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::pki::{Algorithm, SecretFormat};

mod buildkitd;
mod load;
mod validate;

pub use buildkitd::{
    BuildkitdConfig, Cdi, Dns, DockerfileFrontend, Frontend, GatewayFrontend, History, KeyPair, Log,
    LogFormat, LogLevel, OciWorker, Otel, Registry, System, Worker, field_hint, quantity_bytes,
};
pub use load::{
    BASE_OVERLAY_NAME, DEFAULT_OVERLAY_NAME, FEEDING_FIELDS, FEEDING_VARIABLES, MAX_OVERLAY_BYTES,
    OverlayError, Resolved, Resolver, Sources, TEMPLATE_VARIABLES, load, load_all, read_overlay_file,
    resolve_all,
};
pub use validate::{Invalid, rotation_timing, validate};

/// The JSON Schema of an overlay file, as printed by `kiln schema`.
pub fn schema() -> serde_json::Value {
    schemars::schema_for!(Overlay).to_value()
}

/// The pinned BuildKit version rendered when an overlay does not choose one.
pub const DEFAULT_BUILDKIT_VERSION: &str = "v0.32.2";

/// One environment's settings, after `extends:` has been resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Overlay {
    /// The parent overlay (file name without `.yaml`) whose settings this one starts from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// The namespace everything is rendered into. May be a template, such as `buildkit-{{overlay}}`.
    pub namespace: String,
    /// Render the Namespace object itself.
    pub create_namespace: bool,
    /// Extra labels put on every rendered object.
    pub common_labels: BTreeMap<String, String>,
    /// The buildkitd daemon.
    pub buildkit: Buildkit,
    /// The Tekton Task that builds images against the daemon.
    pub tekton: Tekton,
    /// The mTLS certificates.
    pub certs: Certs,
    /// The rotation CronJob and bootstrap Job.
    pub rotation: Rotation,
    /// The kiln image used by the Task step, the CronJob and the bootstrap Job.
    pub kiln: Kiln,
    /// How the output is laid out for a GitOps tool.
    pub gitops: Gitops,
    /// Team namespaces whose TaskRuns build against this farm. Each gets a client Secret of its
    /// own (renewed by the farm's CronJob), a Role and RoleBinding that let the CronJob renew
    /// it, and a copy of the Task. kiln does not create these namespaces: they must exist
    /// before the sync. The farm's own namespace is always a tenant; do not list it.
    pub tenants: Vec<Tenant>,
}

/// A team namespace that builds against the farm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tenant {
    /// The namespace the team's TaskRuns run in. kiln does not create it.
    pub namespace: String,
    /// Render a copy of the Task in this namespace (false: only the client Secret).
    #[serde(default = "default_true")]
    pub task: bool,
}

fn default_true() -> bool {
    true
}

/// The name of the Role and RoleBinding in each tenant namespace that let the farm's
/// `kiln-rotate` ServiceAccount renew the tenant's client Secret: `kiln-rotate-<farm
/// namespace>`, so that two farms serving one tenant namespace each bind their own
/// ServiceAccount instead of overwriting one another's binding. `kiln render` creates them
/// and `kiln rotate` names them in its errors.
pub fn tenant_rbac_name(farm_namespace: &str) -> String {
    format!("kiln-rotate-{farm_namespace}")
}

/// How long past the Tekton build timeout a draining buildkitd pod is given before the
/// kubelet kills it: the preStop poll interval, buildkitd's own shutdown, and slack.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The most buildkitd replicas an overlay may ask for, and `kiln build --replicas` accepts:
/// twice Kubernetes' documented 5,000-node limit, so never a real farm's ceiling, while
/// choosing a daemon over that many stays a few milliseconds (docs/build.md).
pub const MAX_REPLICAS: u32 = 10_000;

impl Overlay {
    /// Every namespace that holds a client Secret: the farm's own first, then the tenants
    /// in the order the overlay lists them.
    pub fn tenant_namespaces(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.namespace.as_str()).chain(self.tenants.iter().map(|t| t.namespace.as_str()))
    }

    /// The `terminationGracePeriodSeconds` of a buildkitd pod: the longest build (the Tekton
    /// timeout) may finish while the preStop hook drains, plus [`DRAIN_MARGIN`].
    pub fn termination_grace(&self) -> Duration {
        Duration::from_secs(
            self.tekton
                .timeout
                .as_secs()
                .saturating_add(DRAIN_MARGIN.as_secs()),
        )
    }

    /// The longest a rolling restart of every replica can take: replicas restart one at a
    /// time and each may drain for the whole grace period.
    pub fn worst_case_restart(&self) -> Duration {
        Duration::from_secs(
            self.termination_grace()
                .as_secs()
                .saturating_mul(i64::from(self.buildkit.replicas.max(1))),
        )
    }
}

impl Default for Overlay {
    fn default() -> Self {
        Self {
            extends: None,
            namespace: "buildkit".into(),
            create_namespace: true,
            common_labels: BTreeMap::new(),
            buildkit: Buildkit::default(),
            tekton: Tekton::default(),
            certs: Certs::default(),
            rotation: Rotation::default(),
            kiln: Kiln::default(),
            gitops: Gitops::default(),
            tenants: Vec::new(),
        }
    }
}

/// How buildkitd runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Non-root (uid 1000) with `--oci-worker-no-process-sandbox`; seccomp and AppArmor Unconfined.
    #[default]
    Rootless,
    /// Root with `privileged: true`.
    Privileged,
    /// `hostUsers: false` with `privileged: true` inside a user namespace.
    Userns,
}

/// The kind of workload that runs buildkitd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// A Deployment behind one Service: any replica serves any build.
    #[default]
    Deployment,
    /// A StatefulSet with a headless Service: builds pick a replica by consistent hashing.
    Statefulset,
}

/// The buildkitd daemon settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Buildkit {
    /// The BuildKit version, such as `v0.32.2`; also the `app.kubernetes.io/version` label of
    /// the daemon's objects (kiln's own objects carry kiln's version).
    pub version: String,
    /// The image repository, without tag or digest; the tag is the version, with `-rootless`
    /// in rootless mode.
    pub image: String,
    /// Pin the daemon's image by digest (`sha256:` and 64 hex digits): the digest of the tag
    /// the mode runs (`<version>-rootless` in rootless mode, `<version>` otherwise), rendered as
    /// `<image>:<tag>@<digest>`. The digest wins over the tag: change it together with
    /// `version` and `mode`. Empty: the tag alone. kiln ships no default (see docs/objects.md).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Secrets (of type kubernetes.io/dockerconfigjson) the daemon's pods pull the image with,
    /// such as a private mirror of moby/buildkit. They must exist in the farm's namespace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// rootless, privileged or userns.
    pub mode: Mode,
    /// deployment or statefulset.
    pub workload: Workload,
    /// The number of daemon replicas.
    #[schemars(range(max = MAX_REPLICAS))]
    pub replicas: u32,
    /// The name of the daemon workload and its Service.
    pub service_name: String,
    /// The TCP port buildkitd serves gRPC over mTLS on.
    pub port: u16,
    /// CPU and memory requests and limits for the daemon container.
    pub resources: Resources,
    /// Node labels the daemon pods must match.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the daemon pods.
    pub tolerations: Vec<Toleration>,
    /// Extra `buildkitd` flags, appended after the ones kiln sets.
    pub extra_args: Vec<String>,
    /// The volume that holds buildkitd's state and build cache.
    pub cache: Cache,
    /// Extra buildkitd.toml settings (registry mirrors, history limits, log level…), with the
    /// key names of BuildKit's docs/buildkitd.toml.md. kiln adds the garbage collection.
    pub config: BuildkitdConfig,
}

/// What backs the build cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CacheVolume {
    /// An emptyDir: the cache is lost whenever the pod restarts (every certificate renewal).
    #[default]
    EmptyDir,
    /// A PersistentVolumeClaim per replica: the cache survives restarts.
    Persistent,
}

/// The build cache volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Cache {
    /// emptyDir (default) or persistent.
    pub volume: CacheVolume,
    /// The emptyDir's sizeLimit or the PVC's request, such as `200Gi`; garbage collection is
    /// sized from it. Empty (emptyDir only): no limit.
    pub size: String,
    /// The StorageClass of the PVCs (persistent only). Empty: the cluster's default class.
    pub storage_class: String,
}

impl Cache {
    /// The size in bytes, when one is set and valid.
    pub fn size_bytes(&self) -> Option<u64> {
        quantity_bytes(&self.size)
    }
}

impl Default for Buildkit {
    fn default() -> Self {
        Self {
            version: DEFAULT_BUILDKIT_VERSION.into(),
            image: "docker.io/moby/buildkit".into(),
            digest: String::new(),
            image_pull_secrets: Vec::new(),
            mode: Mode::default(),
            workload: Workload::default(),
            replicas: 1,
            service_name: "buildkitd".into(),
            port: 1234,
            resources: Resources::default(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            extra_args: Vec::new(),
            cache: Cache::default(),
            config: BuildkitdConfig::default(),
        }
    }
}

/// Resource requests and limits, as Kubernetes quantities (`500m`, `2Gi`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Resources {
    /// Requests by resource name (`cpu`, `memory`, `ephemeral-storage`).
    pub requests: BTreeMap<String, String>,
    /// Limits by resource name.
    pub limits: BTreeMap<String, String>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            requests: BTreeMap::from([("cpu".into(), "500m".into()), ("memory".into(), "1Gi".into())]),
            limits: BTreeMap::from([("memory".into(), "4Gi".into())]),
        }
    }
}

/// A pod toleration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    /// The taint key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Exists` or `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// The taint value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// Seconds a NoExecute toleration lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// The Tekton Task settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Tekton {
    /// Render the Task.
    pub enabled: bool,
    /// The Task name.
    pub name: String,
    /// Also render the daemonless variant as a second Task.
    pub daemonless: bool,
    /// Pin the daemonless Task's image (`<buildkit.image>:<version>-rootless`) by digest.
    /// Empty: `buildkit.digest` in rootless mode (the daemon runs the same image), else the tag alone.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub daemonless_digest: String,
    /// Default for the PUSH param.
    pub push: bool,
    /// Default for the PLATFORMS param (empty: the daemon's platform).
    pub platforms: Vec<String>,
    /// Default for the DOCKERFILE param.
    pub dockerfile: String,
    /// Default for the CONTEXT param.
    pub context: String,
    /// Build timeout passed to `kiln build --timeout`.
    pub timeout: Duration,
    /// Resources for the build step.
    pub step_resources: Resources,
}

impl Default for Tekton {
    fn default() -> Self {
        Self {
            enabled: true,
            name: "buildkit".into(),
            daemonless: false,
            daemonless_digest: String::new(),
            push: true,
            platforms: Vec::new(),
            dockerfile: "./Dockerfile".into(),
            context: ".".into(),
            timeout: Duration::from_secs(3600),
            // The step drives buildctl, which mostly waits on the daemon: one CPU is plenty
            // for the context upload, and a limit lets namespaces with a CPU quota run it.
            step_resources: Resources {
                requests: BTreeMap::from([("cpu".into(), "100m".into()), ("memory".into(), "128Mi".into())]),
                limits: BTreeMap::from([("cpu".into(), "1".into()), ("memory".into(), "512Mi".into())]),
            },
        }
    }
}

/// The mTLS certificate settings, shared by render, certs, rotate and build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Certs {
    /// ecdsa-p256 (default), ecdsa-p384 or ed25519.
    pub algorithm: Algorithm,
    /// Lifetime of the CA.
    pub ca_validity: Duration,
    /// Lifetime of the daemon and client certificates.
    pub validity: Duration,
    /// Renew a certificate when less than this is left. Default: the last third of its lifetime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<Duration>,
    /// Extra DNS names or IP addresses for the daemon certificate.
    pub extra_sans: Vec<String>,
    /// pem (ca.pem/cert.pem/key.pem) or tls (ca.crt/tls.crt/tls.key).
    pub format: SecretFormat,
    /// The Secret names.
    pub secrets: SecretNames,
}

impl Default for Certs {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            ca_validity: Duration::from_days(5 * 365),
            validity: Duration::from_days(90),
            renew_before: None,
            extra_sans: Vec::new(),
            format: SecretFormat::default(),
            secrets: SecretNames::default(),
        }
    }
}

impl Certs {
    /// The renew-before window for leaves: the configured one, or a third of the lifetime.
    pub fn leaf_renew_before(&self) -> Duration {
        self.renew_before
            .unwrap_or_else(|| Duration::from_secs(self.validity.as_secs() / 3))
    }

    /// The renew-before window for the CA: the last third of its lifetime.
    pub fn ca_renew_before(&self) -> Duration {
        Duration::from_secs(self.ca_validity.as_secs() / 3)
    }
}

/// The names of the three Secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SecretNames {
    /// The CA certificate and key (read only by kiln).
    pub ca: String,
    /// The daemon certificate, key and trust bundle.
    pub daemon: String,
    /// The client certificate, key and trust bundle (mounted by the Task).
    pub client: String,
}

impl Default for SecretNames {
    fn default() -> Self {
        Self {
            ca: "buildkit-ca".into(),
            daemon: "buildkit-daemon-certs".into(),
            client: "buildkit-client-certs".into(),
        }
    }
}

/// How buildkitd is restarted after its certificates change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RestartStrategy {
    /// Patch `kiln.dev/restartedAt` into the pod template: a rolling restart.
    #[default]
    Rollout,
    /// Do not restart; something else must (the daemon keeps serving the old certs until then).
    None,
}

/// The rotation CronJob settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Rotation {
    /// Render the CronJob, the bootstrap Job and their RBAC.
    pub enabled: bool,
    /// The cron schedule of `kiln rotate`.
    pub schedule: String,
    /// The CronJob's time zone (IANA name), such as `Etc/UTC`.
    pub time_zone: String,
    /// How buildkitd is restarted after a renewal.
    pub restart_strategy: RestartStrategy,
    /// How long each CA rollover phase waits for new trust to reach every client.
    pub propagation_delay: Duration,
    /// Resources for the rotate container.
    pub resources: Resources,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            enabled: true,
            schedule: "17 3 * * *".into(),
            time_zone: "Etc/UTC".into(),
            restart_strategy: RestartStrategy::default(),
            propagation_delay: Duration::from_days(2),
            // kiln rotate's work (key generation, TLS checks) runs on one thread at a time, so
            // a one-CPU limit costs it nothing and bounds a runaway.
            // Memory from scripts/bench-rotate's peak RSS: 15 MB for one tenant, 16 MB for 50
            // (docs/rotate.md), so 32Mi requested and 64Mi as the limit leave twice that.
            resources: Resources {
                requests: BTreeMap::from([("cpu".into(), "10m".into()), ("memory".into(), "32Mi".into())]),
                limits: BTreeMap::from([("cpu".into(), "1".into()), ("memory".into(), "64Mi".into())]),
            },
        }
    }
}

/// The kiln image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Kiln {
    /// The kiln image (binary plus buildctl), such as `ghcr.io/kiln-dev/kiln:0.1.0`: build it
    /// from the Dockerfile, or use a release image (docs/build.md).
    pub image: String,
    /// Pin the kiln image by digest (`sha256:` and 64 hex digits), rendered as
    /// `<image>@<digest>`. The digest wins over the tag: change it together with `image`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Secrets (of type kubernetes.io/dockerconfigjson) the CronJob and the bootstrap Job pull
    /// the kiln image with. They must exist in the farm's namespace; TaskRuns of the Task (and
    /// of its tenant copies) need them too, in their own namespace (docs/objects.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
}

impl Default for Kiln {
    fn default() -> Self {
        Self {
            image: format!("ghcr.io/kiln-dev/kiln:{}", crate::VERSION),
            digest: String::new(),
            image_pull_secrets: Vec::new(),
        }
    }
}

impl Kiln {
    /// The reference pods run: `image`, or `image@digest` when a digest is set.
    pub fn reference(&self) -> String {
        pinned(&self.image, &self.digest)
    }
}

/// `reference@digest`, or the reference alone when `digest` is empty.
pub fn pinned(reference: &str, digest: &str) -> String {
    if digest.is_empty() {
        reference.to_string()
    } else {
        format!("{reference}@{digest}")
    }
}

/// The GitOps tool the output is laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    /// `rendered/<overlay>/` with a kustomization.yaml.
    #[default]
    Kustomize,
    /// Adds `rendered/argocd/<overlay>.yaml` Applications.
    Argocd,
    /// Adds `rendered/flux/` with a GitRepository and Kustomizations.
    Flux,
}

/// GitOps layout settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Gitops {
    /// kustomize, argocd or flux.
    pub flavor: Flavor,
    /// The git repository the GitOps tool reads.
    #[serde(rename = "repoURL")]
    pub repo_url: String,
    /// The branch or tag.
    pub revision: String,
    /// The path of the rendered tree inside the repository. Empty: the `--out` directory as
    /// given (run kiln from the repository root), such as `rendered`.
    pub path: String,
    /// The Argo CD project.
    pub project: String,
    /// The namespace Argo CD or Flux runs in. Empty: `argocd` or `flux-system`.
    pub controller_namespace: String,
    /// Flux only: Kustomizations (in the controller namespace) that must be ready before
    /// this overlay's, such as the one that installs Tekton's CRDs.
    pub depends_on: Vec<String>,
}

impl Default for Gitops {
    fn default() -> Self {
        Self {
            flavor: Flavor::default(),
            repo_url: "https://git.example.com/platform/buildkit.git".into(),
            revision: "main".into(),
            path: String::new(),
            project: "default".into(),
            controller_namespace: String::new(),
            depends_on: Vec::new(),
        }
    }
}
