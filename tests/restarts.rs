//! Restarts that never break a build or lose the cache (issue 9).
//!
//! - The drain hook, for real: the preStop command is taken from `kiln render --stdout`
//!   output and run by `sh` and by `busybox sh` with only busybox applets on PATH (the
//!   moby/buildkit image's shell and tools), against a stand-in `buildctl`.
//! - The rendered objects: persistent caches in both workloads, the buildkitd.toml
//!   ConfigMap read back with a TOML parser, its mount in each mode, the checksum, the grace
//!   period, the rolling-update settings, and the loader's errors.
//! - All of it through `kubectl kustomize` and `kubernetes-validate --strict`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::overlay::{BuildkitdConfig, Cache, CacheVolume, Mode, Overlay, Resolver, Sources, Workload};
use kiln::render::{Context, Object, render};
use serde_json::Value;
use support::{kiln, tool};

// ---------------------------------------------------------------------------------------
// The drain hook
// ---------------------------------------------------------------------------------------

/// A build in flight, as `buildctl debug histories --format '{{json .}}'` prints it (a
/// STARTED event: no "type" key, no CompletedAt). Its build arg is named CompletedAt, which
/// must not make it look finished.
const ACTIVE: &str = r#"{"record":{"Ref":"qx1jv8h2k9active","Frontend":"dockerfile.v0","FrontendAttrs":{"CompletedAt":"{\"seconds\":1}","filename":"Dockerfile"},"CreatedAt":{"seconds":1767225600,"nanos":5000},"numCachedSteps":3,"numTotalSteps":12,"numCompletedSteps":4}}"#;
/// The same build once finished (a COMPLETE event).
const DONE: &str = r#"{"type":1,"record":{"Ref":"qx1jv8h2k9active","Frontend":"dockerfile.v0","CreatedAt":{"seconds":1767225600,"nanos":5000},"CompletedAt":{"seconds":1767225900},"numTotalSteps":12,"numCompletedSteps":12}}"#;
/// An older finished build.
const OLD: &str = r#"{"type":1,"record":{"Ref":"oldbuild0000001","CreatedAt":{"seconds":1767000000},"CompletedAt":{"seconds":1767000100}}}"#;

/// The applets the hook may use: the moby/buildkit image is Alpine with busybox.
const APPLETS: &[&str] = &["sh", "awk", "grep", "date", "sleep", "timeout", "tr", "cat"];

/// Render `overlay_yaml` as overlay `dev` through the CLI; the parsed objects.
fn render_cli(overlay_yaml: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("overlays")).unwrap();
    std::fs::write(dir.path().join("overlays/dev.yaml"), overlay_yaml).unwrap();
    let out = kiln()
        .current_dir(dir.path())
        .args(["render", "--overlays", "overlays", "--overlay", "dev", "--stdout"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));
    serde_saphyr::from_multiple(&support::stdout(&out)).unwrap()
}

fn kind<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn daemon_container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

/// The preStop exec command of the rendered daemon workload.
fn pre_stop_command(workload: &Value) -> Vec<String> {
    daemon_container(workload)["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .expect("a preStop exec command")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Which shell runs the hook.
#[derive(Debug, Clone, Copy)]
enum Shell {
    /// The machine's `sh` (dash here) with the usual PATH.
    System,
    /// `busybox sh` with nothing but busybox applets and the stand-in buildctl on PATH.
    Busybox,
}

/// The shells available: always `sh`; `busybox sh` when busybox is installed (scripts/
/// install-test-tools installs it; under CI it must be there).
fn shells() -> Vec<(Shell, Option<PathBuf>)> {
    let mut shells = vec![(Shell::System, None)];
    if let Some(busybox) = tool("busybox") {
        shells.push((Shell::Busybox, Some(busybox)));
    }
    shells
}

/// A stand-in buildctl in a scratch directory: it records its arguments, fails like a
/// refused connection while `down` exists, and otherwise prints `histories`.
struct Daemon {
    dir: tempfile::TempDir,
}

impl Daemon {
    fn new(histories: &[&str]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let stub = dir.path().join("bin/buildctl");
        std::fs::write(
            &stub,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {d}/calls\n\
                 if [ -e {d}/down ]; then\n\
                 echo 'error: listing workers: Unavailable: connection error: desc = \"transport: Error while dialing: dial unix /run/buildkit/buildkitd.sock: connect: connection refused\"' >&2\n\
                 exit 1\nfi\ncat {d}/histories\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let daemon = Self { dir };
        daemon.set(histories);
        daemon
    }

    /// Replace what `debug histories` prints (atomically: the hook may be reading it).
    fn set(&self, lines: &[&str]) {
        let tmp = self.path("histories.new");
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.path("histories")).unwrap();
    }

    fn down(&self) {
        std::fs::write(self.path("down"), "").unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("drain.log")).unwrap_or_default()
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.path("calls")).unwrap_or_default()
    }

    /// Start the rendered command, its `/bin/sh` replaced by `shell`, with a short poll
    /// and bound and its log in a file.
    fn start(&self, command: &[String], shell: (Shell, Option<&Path>), poll: u32, bound: u32) -> Child {
        assert_eq!(command[0], "/bin/sh");
        let bin = self.path("bin");
        let mut cmd = match shell {
            (Shell::System, _) => {
                let mut cmd = Command::new("sh");
                cmd.env(
                    "PATH",
                    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()),
                );
                cmd
            }
            (Shell::Busybox, Some(busybox)) => {
                for applet in APPLETS {
                    let link = bin.join(applet);
                    if !link.exists() {
                        std::os::unix::fs::symlink(busybox, link).unwrap();
                    }
                }
                let mut cmd = Command::new(busybox);
                cmd.arg("sh").env("PATH", &bin);
                cmd
            }
            (Shell::Busybox, None) => unreachable!(),
        };
        cmd.args(&command[1..])
            .env("KILN_DRAIN_POLL", poll.to_string())
            .env("KILN_DRAIN_BOUND", bound.to_string())
            .env("KILN_DRAIN_LOG", self.path("drain.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Wait at most `limit` for `child`; its run time from `since`, or a failure.
fn finish(child: &mut Child, since: Instant, limit: Duration) -> Duration {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                std::io::Read::read_to_string(&mut err, &mut stderr).unwrap();
            }
            assert!(status.success(), "the hook failed: {status}: {stderr}");
            assert!(stderr.is_empty(), "the hook wrote to stderr: {stderr}");
            return since.elapsed();
        }
        if since.elapsed() > limit {
            child.kill().ok();
            panic!("the hook still runs after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rendered_rootless_command() -> Vec<String> {
    let objects = render_cli("buildkit:\n  mode: rootless\n");
    pre_stop_command(kind(&objects, "Deployment"))
}

#[test]
fn drain_waits_for_the_active_build_and_returns_within_one_poll_of_completion() {
    let command = rendered_rootless_command();
    for (shell, busybox) in shells() {
        let daemon = Daemon::new(&[ACTIVE, OLD]);
        let started = Instant::now();
        let mut child = daemon.start(&command, (shell, busybox.as_deref()), 1, 120);
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            child.try_wait().unwrap().is_none(),
            "{shell:?}: the hook returned while a build was active; log:\n{}",
            daemon.log()
        );
        let log = daemon.log();
        assert!(
            log.contains("waiting for 1 active build(s): qx1jv8h2k9active"),
            "{shell:?}: {log}"
        );
        assert!(
            !log.contains("oldbuild"),
            "{shell:?}: a finished build was counted: {log}"
        );
        daemon.set(&[DONE, OLD]);
        let completed = Instant::now();
        let took = finish(&mut child, completed, Duration::from_secs(10));
        // One poll (1 s) plus the time of one look.
        assert!(
            took < Duration::from_millis(1900),
            "{shell:?}: returned {took:?} after completion"
        );
        assert!(started.elapsed() >= Duration::from_secs(3));
        let log = daemon.log();
        assert!(
            log.contains("kiln-drain: no active build; stopping buildkitd"),
            "{shell:?}: {log}"
        );
        // Every look went to the pod's own socket.
        let calls = daemon.calls();
        assert!(calls.lines().count() >= 3, "{shell:?}: {calls}");
        for call in calls.lines() {
            assert_eq!(
                call,
                "--addr unix:///run/user/1000/buildkit/buildkitd.sock debug histories --format {{json .}}",
                "{shell:?}"
            );
        }
    }
}

#[test]
fn drain_returns_at_once_when_the_daemon_cannot_be_reached() {
    let command = rendered_rootless_command();
    for (shell, busybox) in shells() {
        let daemon = Daemon::new(&[ACTIVE]);
        daemon.down();
        let started = Instant::now();
        let mut child = daemon.start(&command, (shell, busybox.as_deref()), 5, 120);
        let took = finish(&mut child, started, Duration::from_secs(10));
        assert!(
            took < Duration::from_secs(1),
            "{shell:?}: took {took:?} for a dead daemon"
        );
        let log = daemon.log();
        assert!(
            log.contains("cannot reach buildkitd at unix:///run/user/1000/buildkit/buildkitd.sock"),
            "{shell:?}: {log}"
        );
    }
}

#[test]
fn drain_honours_its_overall_bound() {
    let command = rendered_rootless_command();
    for (shell, busybox) in shells() {
        let daemon = Daemon::new(&[ACTIVE]);
        let started = Instant::now();
        let mut child = daemon.start(&command, (shell, busybox.as_deref()), 1, 3);
        let took = finish(&mut child, started, Duration::from_secs(15));
        // `date +%s` counts whole seconds, so the hook may stop up to 1 s early, never late.
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(4500),
            "{shell:?}: a 3 s bound took {took:?}"
        );
        let log = daemon.log();
        assert!(
            log.contains("gave up after") && log.contains("1 active build(s); they will be interrupted"),
            "{shell:?}: {log}"
        );
    }
}

#[test]
fn drain_of_an_idle_daemon_waits_one_poll_for_late_clients() {
    let command = rendered_rootless_command();
    for (shell, busybox) in shells() {
        let daemon = Daemon::new(&[OLD]);
        let started = Instant::now();
        let mut child = daemon.start(&command, (shell, busybox.as_deref()), 2, 120);
        let took = finish(&mut child, started, Duration::from_secs(10));
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(3900),
            "{shell:?}: an idle daemon took {took:?}"
        );
        assert!(daemon.log().contains("no active build"), "{shell:?}");
    }
}

#[test]
fn rendered_hook_targets_the_pods_own_socket_and_fits_in_the_grace_period() {
    for (mode, socket) in [
        ("rootless", "unix:///run/user/1000/buildkit/buildkitd.sock"),
        ("privileged", "unix:///run/buildkit/buildkitd.sock"),
        ("userns", "unix:///run/buildkit/buildkitd.sock"),
    ] {
        for (timeout, grace) in [("1h", 3600 + 300), ("2h30m", 9000 + 300), ("90s", 90 + 300)] {
            let objects = render_cli(&format!(
                "buildkit:\n  mode: {mode}\n  workload: statefulset\ntekton:\n  timeout: {timeout}\n"
            ));
            let sts = kind(&objects, "StatefulSet");
            let command = pre_stop_command(sts);
            assert_eq!(command[..2], ["/bin/sh", "-c"]);
            assert_eq!(command[3], "kiln-drain");
            // The socket buildkitd listens on in this mode.
            assert_eq!(command[4], socket, "{mode}");
            let args = daemon_container(sts)["args"].as_array().unwrap();
            assert!(args.iter().any(|a| a == socket), "{mode}: {args:?}");
            let pod_grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap();
            assert_eq!(pod_grace, grace, "{mode} {timeout}");
            let bound: i64 = command[5].parse().unwrap();
            let poll: i64 = command[6].parse().unwrap();
            let tekton = grace - 300;
            assert!(bound > tekton, "the hook must outwait the longest build");
            assert!(
                bound + 30 < pod_grace,
                "buildkitd needs time to stop after the hook"
            );
            assert_eq!(poll, 5);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rendered objects
// ---------------------------------------------------------------------------------------

fn overlay(mode: Mode, workload: Workload, replicas: u32, volume: CacheVolume, size: &str) -> Overlay {
    let mut overlay = Overlay::default();
    overlay.buildkit.mode = mode;
    overlay.buildkit.workload = workload;
    overlay.buildkit.replicas = replicas;
    overlay.buildkit.cache = Cache {
        volume,
        size: size.into(),
        storage_class: if volume == CacheVolume::Persistent {
            "fast".into()
        } else {
            String::new()
        },
    };
    overlay
}

fn objects(overlay: &Overlay) -> Vec<Object> {
    render(overlay, &Context::new("prod")).unwrap()
}

fn find<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Value {
    &objects
        .iter()
        .find(|o| o.kind == kind && o.name == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .value
}

fn workload(objects: &[Object]) -> &Value {
    &objects
        .iter()
        .find(|o| o.kind == "Deployment" || o.kind == "StatefulSet")
        .unwrap()
        .value
}

fn volume<'a>(workload: &'a Value, name: &str) -> Option<&'a Value> {
    workload["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
}

fn mount_path<'a>(workload: &'a Value, name: &str) -> &'a str {
    daemon_container(workload)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no mount {name}"))["mountPath"]
        .as_str()
        .unwrap()
}

const STATE_DIR: [(Mode, &str); 3] = [
    (Mode::Rootless, "/home/user/.local/share/buildkit"),
    (Mode::Privileged, "/var/lib/buildkit"),
    (Mode::Userns, "/var/lib/buildkit"),
];

#[test]
fn persistent_statefulset_claims_one_retained_pvc_per_replica() {
    for (mode, state) in STATE_DIR {
        let objects = objects(&overlay(
            mode,
            Workload::Statefulset,
            3,
            CacheVolume::Persistent,
            "200Gi",
        ));
        let sts = find(&objects, "StatefulSet", "buildkitd");
        let templates = sts["spec"]["volumeClaimTemplates"].as_array().unwrap();
        assert_eq!(templates.len(), 1);
        let claim = &templates[0];
        assert_eq!(claim["metadata"]["name"], "cache");
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "200Gi");
        assert_eq!(claim["spec"]["storageClassName"], "fast");
        assert_eq!(claim["spec"]["accessModes"], serde_json::json!(["ReadWriteOnce"]));
        // Kubernetes refuses changes to a claim template: no version label in it.
        assert!(
            claim["metadata"]["labels"]
                .get("app.kubernetes.io/version")
                .is_none()
        );
        let policy = &sts["spec"]["persistentVolumeClaimRetentionPolicy"];
        assert_eq!(policy["whenScaled"], "Retain");
        assert_eq!(policy["whenDeleted"], "Retain");
        assert!(
            sts["metadata"]["annotations"]["kiln.dev/cache"]
                .as_str()
                .unwrap()
                .contains("whenScaled: Retain"),
            "the retention choice is explained on the object"
        );
        // The pod mounts the claim (no emptyDir of that name) at buildkitd's state root.
        assert!(volume(sts, "cache").is_none());
        assert_eq!(mount_path(sts, "cache"), state);
        assert!(objects.iter().all(|o| o.kind != "PersistentVolumeClaim"));
    }
}

#[test]
fn persistent_single_replica_deployment_gets_a_pvc_and_never_overlaps_two_daemons() {
    let objects = objects(&overlay(
        Mode::Privileged,
        Workload::Deployment,
        1,
        CacheVolume::Persistent,
        "50Gi",
    ));
    let pvc = find(&objects, "PersistentVolumeClaim", "buildkitd-cache");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "50Gi");
    assert_eq!(pvc["spec"]["storageClassName"], "fast");
    assert_eq!(
        pvc["metadata"]["annotations"]["argocd.argoproj.io/sync-options"],
        "Delete=false"
    );
    let deployment = find(&objects, "Deployment", "buildkitd");
    assert_eq!(
        volume(deployment, "cache").unwrap()["persistentVolumeClaim"]["claimName"],
        "buildkitd-cache"
    );
    // One volume, one daemon: the old pod drains and exits before the new one starts.
    assert_eq!(
        deployment["spec"]["strategy"],
        serde_json::json!({"type": "Recreate"})
    );
}

#[test]
fn deployments_surge_and_statefulsets_roll_one_at_a_time() {
    let surging = objects(&overlay(
        Mode::Rootless,
        Workload::Deployment,
        3,
        CacheVolume::EmptyDir,
        "20Gi",
    ));
    let deployment = find(&surging, "Deployment", "buildkitd");
    assert_eq!(
        deployment["spec"]["strategy"],
        serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    assert_eq!(
        volume(deployment, "cache").unwrap()["emptyDir"]["sizeLimit"],
        "20Gi"
    );
    assert_eq!(
        find(&surging, "PodDisruptionBudget", "buildkitd")["spec"]["maxUnavailable"],
        1
    );
    for volume_kind in [CacheVolume::EmptyDir, CacheVolume::Persistent] {
        let rendered = objects(&overlay(
            Mode::Userns,
            Workload::Statefulset,
            2,
            volume_kind,
            "20Gi",
        ));
        let sts = find(&rendered, "StatefulSet", "buildkitd");
        assert_eq!(
            sts["spec"]["updateStrategy"],
            serde_json::json!({"type": "RollingUpdate"})
        );
        assert_eq!(
            find(&rendered, "PodDisruptionBudget", "buildkitd")["spec"]["maxUnavailable"],
            1
        );
    }
}

#[test]
fn grace_period_is_the_tekton_timeout_plus_the_drain_margin() {
    for secs in [60, 3600, 7200, 86_400] {
        let mut overlay = Overlay::default();
        overlay.tekton.timeout = kiln::duration::Duration::from_secs(secs);
        let objects = objects(&overlay);
        let grace = workload(&objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap();
        assert_eq!(grace, secs + kiln::overlay::DRAIN_MARGIN.as_secs());
        assert_eq!(grace, overlay.termination_grace().as_secs());
    }
}

/// The `[worker.oci]` GC numbers of a rendered buildkitd.toml, parsed back.
struct Gc {
    rules: Vec<toml::Table>,
}

impl Gc {
    fn read(objects: &[Object]) -> (String, Self) {
        let config = find(objects, "ConfigMap", "buildkitd-config");
        let text = config["data"]["buildkitd.toml"].as_str().unwrap().to_string();
        let file: toml::Table = toml::from_str(&text).unwrap();
        let oci = file["worker"]["oci"].as_table().unwrap();
        assert_eq!(oci["gc"].as_bool(), Some(true), "{text}");
        let rules = oci["gcpolicy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_table().unwrap().clone())
            .collect();
        (text, Self { rules })
    }

    fn bytes(rule: &toml::Table, key: &str) -> Option<u64> {
        rule.get(key).map(|v| {
            u64::try_from(
                v.as_integer()
                    .unwrap_or_else(|| panic!("{key} = {v} is not bytes")),
            )
            .unwrap()
        })
    }
}

#[test]
fn gc_is_sized_from_the_volume_so_the_cache_cannot_fill_it() {
    for (size, bytes) in [
        ("1Gi", 1u64 << 30),
        ("50Gi", 50 << 30),
        ("200G", 200_000_000_000),
        ("2Ti", 2 << 40),
    ] {
        for (volume_kind, workload_kind) in [
            (CacheVolume::EmptyDir, Workload::Deployment),
            (CacheVolume::Persistent, Workload::Statefulset),
        ] {
            let objects = objects(&overlay(Mode::Rootless, workload_kind, 2, volume_kind, size));
            let (text, gc) = Gc::read(&objects);
            assert_eq!(gc.rules.len(), 4, "{text}");
            for (i, rule) in gc.rules.iter().enumerate() {
                let max = Gc::bytes(rule, "maxUsedSpace").expect("every rule caps its usage");
                // A quarter of the volume stays free for builds between two GC passes.
                assert!(
                    max <= bytes / 4 * 3,
                    "{size} rule {i}: maxUsedSpace {max} of {bytes}\n{text}"
                );
                if let Some(reserved) = Gc::bytes(rule, "reservedSpace") {
                    assert!(reserved < max, "{size} rule {i}: GC can reach its cap");
                }
                if let Some(free) = Gc::bytes(rule, "minFreeSpace") {
                    assert!(
                        free >= bytes / 5 && free < bytes,
                        "{size} rule {i}: minFreeSpace {free}"
                    );
                }
            }
            // The last rule prunes everything, including shared records, down to the cap.
            assert_eq!(gc.rules[3]["all"].as_bool(), Some(true));
            assert_eq!(gc.rules[1]["keepDuration"].as_str(), Some("1440h"));
            assert_eq!(Gc::bytes(&gc.rules[3], "maxUsedSpace"), Some(bytes / 4 * 3));
        }
    }
}

#[test]
fn gc_without_a_size_keeps_buildkits_default_shares_of_the_node_disk() {
    let objects = objects(&overlay(
        Mode::Rootless,
        Workload::Deployment,
        1,
        CacheVolume::EmptyDir,
        "",
    ));
    let (text, gc) = Gc::read(&objects);
    let last = &gc.rules[3];
    assert_eq!(last["maxUsedSpace"].as_str(), Some("80%"), "{text}");
    assert_eq!(last["minFreeSpace"].as_str(), Some("20%"));
    assert_eq!(last["reservedSpace"].as_str(), Some("10%"));
    assert!(volume(workload(&objects), "cache").unwrap()["emptyDir"]["sizeLimit"].is_null());
}

#[test]
fn config_is_mounted_where_each_mode_reads_it() {
    for (mode, dir) in [
        (Mode::Rootless, "/home/user/.config/buildkit"),
        (Mode::Privileged, "/etc/buildkit"),
        (Mode::Userns, "/etc/buildkit"),
    ] {
        for workload_kind in [Workload::Deployment, Workload::Statefulset] {
            let objects = objects(&overlay(mode, workload_kind, 1, CacheVolume::EmptyDir, "10Gi"));
            let w = workload(&objects);
            assert_eq!(mount_path(w, "config"), dir, "{mode:?}");
            assert_eq!(
                volume(w, "config").unwrap()["configMap"]["name"],
                "buildkitd-config"
            );
            let args: Vec<&str> = daemon_container(w)["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            let at = args.iter().position(|a| *a == "--config").unwrap();
            assert_eq!(args[at + 1], format!("{dir}/buildkitd.toml"));
        }
    }
}

fn checksum(objects: &[Object]) -> String {
    workload(objects)["spec"]["template"]["metadata"]["annotations"]["kiln.dev/buildkitd-config-sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_config_change_rolls_the_pods_and_nothing_else_does() {
    let base = overlay(
        Mode::Rootless,
        Workload::Statefulset,
        2,
        CacheVolume::Persistent,
        "100Gi",
    );
    let first = objects(&base);
    let sum = checksum(&first);
    // The annotation is the SHA-256 of the ConfigMap's file, checked with another tool.
    let text = find(&first, "ConfigMap", "buildkitd-config")["data"]["buildkitd.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), &text).unwrap();
    if let Ok(out) = Command::new("sha256sum").arg(dir.path().join("f")).output() {
        assert_eq!(
            support::stdout(&out).split_whitespace().next(),
            Some(sum.as_str())
        );
    }
    assert_eq!(sum.len(), 64);
    // Stable: the same overlay, and changes that do not touch the file.
    assert_eq!(checksum(&objects(&base)), sum);
    let mut unrelated = base.clone();
    unrelated.buildkit.replicas = 5;
    unrelated.tekton.timeout = kiln::duration::Duration::from_secs(600);
    unrelated.certs.validity = kiln::duration::Duration::from_days(30);
    assert_eq!(checksum(&objects(&unrelated)), sum);
    // Any change to the file changes the pod template.
    let mut resized = base.clone();
    resized.buildkit.cache.size = "120Gi".into();
    let mut configured = base.clone();
    configured.buildkit.config = BuildkitdConfig {
        history: Some(kiln::overlay::History {
            max_entries: Some(200),
            ..Default::default()
        }),
        ..Default::default()
    };
    for changed in [resized, configured] {
        assert_ne!(checksum(&objects(&changed)), sum);
    }
}

// ---------------------------------------------------------------------------------------
// The loader
// ---------------------------------------------------------------------------------------

fn load_error(files: &[(&str, &str)]) -> String {
    let sources = Sources::from_memory(
        "overlays",
        files
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    Resolver::new(&sources).resolve("dev").unwrap_err().to_string()
}

#[test]
fn persistent_deployment_with_replicas_is_refused_with_the_fix() {
    let e = load_error(&[(
        "dev",
        "buildkit:\n  replicas: 3\n  cache:\n    volume: persistent\n    size: 100Gi\n",
    )]);
    assert!(
        e.starts_with("failed to load overlays/dev.yaml:4: buildkit.cache.volume: a persistent cache with a Deployment of 3 replicas"),
        "{e}"
    );
    assert!(e.contains("set buildkit.workload: statefulset"), "{e}");
}

#[test]
fn cache_mistakes_name_the_field() {
    for (yaml, expected) in [
        (
            "buildkit:\n  cacheSize: 10Gi\n",
            "failed to load overlays/dev.yaml:2: buildkit.cacheSize: moved to buildkit.cache.size; write it as `cache: {size: 50Gi}` under buildkit",
        ),
        (
            "buildkit:\n  cache:\n    volume: persistent\n",
            "failed to load overlays/dev.yaml:3: buildkit.cache.size: a persistent cache needs a size",
        ),
        (
            "buildkit:\n  cache:\n    size: 10 gigs\n",
            "failed to load overlays/dev.yaml:3: buildkit.cache.size: \"10 gigs\" is not a size in bytes",
        ),
        (
            "buildkit:\n  cache:\n    size: 100Mi\n",
            "failed to load overlays/dev.yaml:3: buildkit.cache.size: 100Mi is too small",
        ),
        (
            "buildkit:\n  cache:\n    storageClass: fast\n",
            "failed to load overlays/dev.yaml:3: buildkit.cache.storageClass: applies to a persistent cache only",
        ),
        (
            "buildkit:\n  cache:\n    volume: pvc\n",
            "failed to load overlays/dev.yaml:3: buildkit.cache.volume: unknown variant `pvc`",
        ),
        (
            "buildkit:\n  extraArgs: [--oci-worker-gc-keepstorage=150000]\n",
            "buildkit.extraArgs[0]: --oci-worker-gc-keepstorage: kiln sizes garbage collection from buildkit.cache.size",
        ),
    ] {
        let e = load_error(&[("dev", yaml)]);
        assert!(e.contains(expected), "{yaml}\n{e}");
    }
}

#[test]
fn buildkit_config_accepts_documented_keys_only() {
    let ok = "buildkit:\n  config:\n    registry:\n      docker.io:\n        mirrors: [mirror.gcr.io]\n    history:\n      maxAge: 2d\n      maxEntries: 20\n    worker:\n      oci:\n        max-parallelism: 4\n    frontend:\n      dockerfile.v0:\n        enabled: true\n";
    let sources = Sources::from_memory("overlays", BTreeMap::from([("dev".to_string(), ok.to_string())]));
    let resolved = Resolver::new(&sources).resolve("dev").unwrap();
    assert_eq!(
        resolved.overlay.buildkit.config.registry["docker.io"].mirrors,
        ["mirror.gcr.io"]
    );
    let objects = render(&resolved.overlay, &Context::new("dev")).unwrap();
    let (text, _) = Gc::read(&objects);
    let file: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(
        file["registry"]["docker.io"]["mirrors"][0].as_str(),
        Some("mirror.gcr.io")
    );
    assert_eq!(file["history"]["maxAge"].as_str(), Some("48h"));
    assert_eq!(file["worker"]["oci"]["max-parallelism"].as_integer(), Some(4));
    assert_eq!(file["frontend"]["dockerfile.v0"]["enabled"].as_bool(), Some(true));

    for (yaml, expected) in [
        (
            "buildkit:\n  config:\n    histroy:\n      maxAge: 2d\n",
            "overlays/dev.yaml:3: buildkit.config.histroy: unknown field `histroy`",
        ),
        (
            "buildkit:\n  config:\n    worker:\n      oci:\n        maxUsedSpace: 90%\n",
            "overlays/dev.yaml:5: buildkit.config.worker.oci.maxUsedSpace: kiln derives garbage collection from buildkit.cache.size",
        ),
        (
            "buildkit:\n  config:\n    grpc:\n      address: [tcp://0.0.0.0:9999]\n",
            "buildkit.config.grpc: kiln sets buildkitd's listen addresses",
        ),
        (
            "buildkit:\n  config:\n    log:\n      level: loud\n",
            "buildkit.config.log.level: unknown variant `loud`",
        ),
        (
            "buildkit:\n  config:\n    registry:\n      docker.io:\n        mirrors: [https://mirror.gcr.io]\n",
            "buildkit.config.registry.docker.io.mirrors[0]: \"https://mirror.gcr.io\" is not a mirror",
        ),
    ] {
        let e = load_error(&[("dev", yaml)]);
        assert!(e.contains(expected), "{yaml}\n{e}");
    }
}

#[test]
fn extends_merges_buildkit_config() {
    let sources = Sources::from_memory(
        "overlays",
        BTreeMap::from([
            (
                "base".to_string(),
                "buildkit:\n  config:\n    registry:\n      docker.io:\n        mirrors: [mirror.gcr.io]\n"
                    .to_string(),
            ),
            (
                "dev".to_string(),
                "extends: base\nbuildkit:\n  config:\n    history:\n      maxEntries: 10\n".to_string(),
            ),
        ]),
    );
    let config = Resolver::new(&sources)
        .resolve("dev")
        .unwrap()
        .overlay
        .buildkit
        .config;
    assert_eq!(config.registry["docker.io"].mirrors, ["mirror.gcr.io"]);
    assert_eq!(config.history.unwrap().max_entries, Some(10));
}

// ---------------------------------------------------------------------------------------
// Real tools
// ---------------------------------------------------------------------------------------

/// Every mode and workload with a persistent or sized emptyDir cache, written as an overlay
/// directory with a kustomization: `kubectl kustomize` builds it and `kubernetes-validate
/// --strict` accepts every object for Kubernetes 1.30 and 1.37.
#[test]
fn persistent_and_sized_caches_pass_kubectl_kustomize_and_kubernetes_validate() {
    let kubectl = tool("kubectl");
    let validate = tool("kubernetes-validate");
    if kubectl.is_none() && validate.is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (mode, _) in STATE_DIR {
        for (workload_kind, replicas) in [(Workload::Deployment, 1), (Workload::Statefulset, 3)] {
            for volume_kind in [CacheVolume::EmptyDir, CacheVolume::Persistent] {
                let mut o = overlay(mode, workload_kind, replicas, volume_kind, "64Gi");
                o.buildkit.config.history = Some(kiln::overlay::History {
                    max_age: Some(kiln::duration::Duration::from_days(2)),
                    max_entries: Some(50),
                });
                let tree = dir
                    .path()
                    .join(format!("{mode:?}-{workload_kind:?}-{volume_kind:?}"));
                std::fs::create_dir(&tree).unwrap();
                let mut names = Vec::new();
                for object in objects(&o) {
                    if object.api_version == "tekton.dev/v1" {
                        continue; // not a core kind: no schema
                    }
                    let name = format!("{}-{}.yaml", object.kind.to_lowercase(), object.name);
                    std::fs::write(tree.join(&name), kiln::yaml::to_string(&object.value).unwrap()).unwrap();
                    files.push(tree.join(&name));
                    names.push(name);
                }
                assert!(names.iter().any(|n| n == "configmap-buildkitd-config.yaml"));
                let kustomization = format!(
                    "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}",
                    names.iter().map(|n| format!("- {n}\n")).collect::<String>()
                );
                std::fs::write(tree.join("kustomization.yaml"), kustomization).unwrap();
                if let Some(kubectl) = &kubectl {
                    let built = Command::new(kubectl)
                        .arg("kustomize")
                        .arg(&tree)
                        .output()
                        .unwrap();
                    assert!(built.status.success(), "{}", support::stderr(&built));
                    let docs: Vec<Value> = serde_saphyr::from_multiple(&support::stdout(&built)).unwrap();
                    assert_eq!(docs.len(), names.len(), "{}", tree.display());
                }
            }
        }
    }
    if let Some(validate) = validate {
        for version in ["1.30.0", "1.37.0"] {
            let out = Command::new(&validate)
                .args(["--strict", "--quiet", "-k", version])
                .args(&files)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "kubernetes-validate {version}:\n{}{}",
                support::stdout(&out),
                support::stderr(&out)
            );
        }
    }
}
