//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Kubernetes versions `kubernetes-validate --strict` checks rendered objects against,
/// oldest and newest. 1.30 is the oldest kiln supports: the first with AppArmor as a
/// securityContext field, which the rootless daemon uses. 1.37 is the newest whose schemas
/// kubernetes-validate ships. kiln's typed objects are built against k8s-openapi's `earliest`
/// API (Cargo.toml), which is newer than 1.30, so the 1.30 check catches a field that old
/// clusters lack and the 1.37 check one that new clusters dropped.
pub const KUBE_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Run `kubernetes-validate --strict` (found by [`tool`]) on `files` for Kubernetes
/// `version`: whether it passed, and its stdout and stderr.
pub fn kubernetes_validate(validate: &Path, version: &str, files: &[PathBuf]) -> (bool, String) {
    let output = Command::new(validate)
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!("{}{}", stdout(&output), stderr(&output)),
    )
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `kiln` command for the binary under test.
pub fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// A command's stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The sorted names in a directory: proves what a failed command left behind.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Find an external tool (kubectl, kubernetes-validate, openssl, checkov) in
/// `.tools/bin` (installed by scripts/install-test-tools) or on PATH.
///
/// Returns None, after saying so on stderr, when the tool is missing under plain
/// `cargo test`. Under CI (`CI` set) a missing tool is a failure, never a silent skip.
pub fn tool(name: &str) -> Option<PathBuf> {
    let local = repo_root().join(".tools/bin").join(name);
    if local.exists() {
        return Some(local);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("{name} is required under CI: run scripts/install-test-tools");
    }
    // Written to the stderr handle, not with eprintln!, so the test harness does not
    // capture it: a skip is always visible.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {name} not found; run scripts/install-test-tools to enable this test"
    );
    None
}
pub mod apiserver;
pub mod tls;
