//! The output tree under hostile input and user work, through the real binary (issue 15,
//! points 2 and 5): names that would reach outside `--out`, modes, edited and foreign files,
//! FIFOs, an overlay file that is a directory, interrupted swaps, the old manifest format,
//! fsync before the swap, a closed stdout, and one GitOps layout replacing another.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{entries, kiln, repo_root, stderr, stdout};

/// A scratch directory holding a copy of the shipped overlays.
fn shipped() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo_root().join("overlays"), &dir.path().join("overlays"));
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Run `kiln args` in `dir`, failing the test if it takes longer than 60 s (a hang).
fn run(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = kiln();
    cmd.current_dir(dir).args(args);
    within(cmd, Duration::from_secs(60))
}

fn within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("{cmd:?} hung for more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(out), stderr(out));
    stderr(out)
}

/// Give the shipped dev overlay `replicas` daemons: a change that rewrites a few files.
fn set_dev_replicas(ws: &Path, replicas: u32) {
    let dev = ws.join("overlays/dev.yaml");
    let text = fs::read_to_string(&dev).unwrap();
    let text = text
        .lines()
        .map(|l| match l.strip_prefix("  replicas: ") {
            Some(_) => format!("  replicas: {replicas}\n"),
            None => format!("{l}\n"),
        })
        .collect::<String>();
    fs::write(&dev, text).unwrap();
}

/// Assert that `kiln args` fails with exit 1 and an error that holds `needle`.
fn fails(dir: &Path, args: &[&str], needle: &str) {
    let out = run(dir, args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
    assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

// ---------------------------------------------------------------- names that reach paths

#[test]
fn object_names_never_reach_outside_the_output_directory() {
    for (field, doc) in [
        (
            "kind",
            "apiVersion: v1\nkind: ../../../escape\nmetadata:\n  name: x\n",
        ),
        (
            "kind",
            "apiVersion: v1\nkind: /tmp/escape\nmetadata:\n  name: x\n",
        ),
        (
            "kind",
            "apiVersion: v1\nkind: \"Config\\0Map\"\nmetadata:\n  name: x\n",
        ),
        ("kind", "apiVersion: v1\nkind: Config.Map\nmetadata:\n  name: x\n"),
        (
            "name",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ../../x\n",
        ),
        ("name", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: X\n"),
        (
            "namespace",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: ../up\n",
        ),
    ] {
        let ws = shipped();
        let nested = ws.path().join("a/b/c");
        fs::create_dir_all(&nested).unwrap();
        copy_dir(&ws.path().join("overlays"), &nested.join("overlays"));
        fs::create_dir_all(nested.join("overlays/dev/extra")).unwrap();
        fs::write(nested.join("overlays/dev/extra/x.yaml.hbs"), doc).unwrap();
        for args in [&["render"][..], &["render", "--stdout"], &["check"]] {
            let out = run(&nested, args);
            assert_eq!(out.status.code(), Some(1), "{args:?} {doc}: {}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.contains("overlays/dev/extra/x.yaml.hbs") && err.contains(field),
                "{args:?}: the error names the file and the field: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(stdout(&out).is_empty());
        }
        // Nothing was written anywhere: not the output, not above it.
        assert_eq!(entries(&nested), ["overlays"]);
        assert_eq!(entries(&ws.path().join("a")), ["b"]);
        assert_eq!(entries(&ws.path().join("a/b")), ["c"]);
        assert_eq!(entries(ws.path()), ["a", "overlays"]);
    }
}

// ---------------------------------------------------------------- modes and user work

#[test]
fn modes_of_directories_and_files_are_kept() {
    let ws = shipped();
    ok(&run(ws.path(), &["render"]));
    let out = ws.path().join("rendered");
    fs::create_dir(out.join("mine")).unwrap();
    fs::write(out.join("mine/notes.md"), "mine\n").unwrap();
    fs::set_permissions(out.join("mine"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(out.join("mine/notes.md"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(out.join("dev"), fs::Permissions::from_mode(0o750)).unwrap();
    let kustomization = out.join("dev/kustomization.yaml");
    fs::set_permissions(&kustomization, fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o751)).unwrap();
    // A change to dev, so that the tree is written again.
    set_dev_replicas(ws.path(), 2);
    let log = ok(&run(ws.path(), &["render"]));
    assert!(!log.contains(": 0 files changed"), "{log}");
    assert!(
        fs::read_to_string(&kustomization)
            .unwrap()
            .contains("poddisruptionbudget")
    );
    assert_eq!(mode(&out.join("mine")), 0o700);
    assert_eq!(mode(&out.join("mine/notes.md")), 0o600);
    assert_eq!(mode(&out.join("dev")), 0o750);
    assert_eq!(mode(&kustomization), 0o640, "a rewritten file keeps its mode");
    assert_eq!(mode(&out), 0o751);
}

#[test]
fn a_stale_file_is_deleted_only_while_it_is_as_kiln_wrote_it() {
    let ws = shipped();
    ok(&run(ws.path(), &["render"]));
    let out = ws.path().join("rendered");
    let edited = out.join("staging/service-buildkitd.yaml");
    fs::write(&edited, fs::read_to_string(&edited).unwrap() + "# my note\n").unwrap();
    // A user's own file that happens to start with kiln's header, in an overlay's directory.
    let header_alike = out.join("staging/my-extra.yaml");
    fs::write(
        &header_alike,
        "# Rendered by kiln 0.1.0 from overlays/staging.yaml. Do not edit: run kiln render.\nmine: true\n",
    )
    .unwrap();
    fs::remove_file(ws.path().join("overlays/staging.yaml")).unwrap();

    let check = run(ws.path(), &["check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stdout(&check).contains("edited: staging/service-buildkitd.yaml"),
        "{}",
        stdout(&check)
    );

    let log = ok(&run(ws.path(), &["render"]));
    assert!(
        log.contains(&format!(
            "kiln: warning: kept {}/staging/service-buildkitd.yaml: kiln wrote it and no longer renders it, but it was edited since",
            "rendered"
        )),
        "{log}"
    );
    assert_eq!(
        log.matches("warning").count(),
        1,
        "one line, for the edited file only: {log}"
    );
    assert!(fs::read_to_string(&edited).unwrap().ends_with("# my note\n"));
    assert!(
        header_alike.exists(),
        "a file not in the manifest is never deleted"
    );
    assert_eq!(
        entries(&out.join("staging")),
        ["my-extra.yaml", "service-buildkitd.yaml"],
        "the unchanged staging files are gone"
    );
    let manifest = fs::read_to_string(out.join(".kiln-manifest")).unwrap();
    assert!(
        !manifest.contains("staging/"),
        "the kept file is the user's now: {manifest}"
    );
    // And the next render and check are quiet about it.
    let again = ok(&run(ws.path(), &["render"]));
    assert!(!again.contains("warning"), "{again}");
    ok(&run(ws.path(), &["check"]));
}

#[test]
fn the_first_manifest_format_is_read_once() {
    let ws = shipped();
    ok(&run(ws.path(), &["render"]));
    let out = ws.path().join("rendered");
    let manifest = out.join(".kiln-manifest");
    // Rewrite the manifest as kiln before hashes wrote it: a comment, then bare paths.
    let old: String = fs::read_to_string(&manifest)
        .unwrap()
        .lines()
        .map(|l| match l.split_once("  ") {
            Some((_, path)) if !l.starts_with('#') => format!("{path}\n"),
            _ => "# Files kiln render wrote here; it deletes them once they are no longer rendered. Do not edit.\n".into(),
        })
        .collect();
    fs::write(&manifest, old).unwrap();
    let edited = out.join("staging/service-buildkitd.yaml");
    let text = fs::read_to_string(&edited).unwrap();
    fs::write(&edited, text.lines().skip(1).collect::<Vec<_>>().join("\n")).unwrap();
    fs::remove_file(ws.path().join("overlays/staging.yaml")).unwrap();

    let log = ok(&run(ws.path(), &["render"]));
    assert!(
        log.contains("kiln: note: rewrote rendered/.kiln-manifest with a hash per file (its first format listed paths only"),
        "{log}"
    );
    assert!(
        edited.exists(),
        "without a hash, a file whose kiln header is gone is kept"
    );
    assert_eq!(entries(&out.join("staging")), ["service-buildkitd.yaml"]);
    let manifest = fs::read_to_string(&manifest).unwrap();
    let entry = manifest
        .lines()
        .find(|l| l.ends_with("  dev/kustomization.yaml"))
        .unwrap();
    assert_eq!(entry.split_once("  ").unwrap().0.len(), 64, "{entry}");
    assert!(!ok(&run(ws.path(), &["render"])).contains("note"), "only once");
}

// ---------------------------------------------------------------- what is not a file

#[test]
fn an_overlay_file_that_is_a_directory_is_an_error() {
    let ws = shipped();
    ok(&run(ws.path(), &["render"]));
    let dev_files = entries(&ws.path().join("rendered/dev")).len();
    let dev = ws.path().join("overlays/dev.yaml");
    fs::remove_file(&dev).unwrap();
    fs::create_dir(&dev).unwrap();
    for args in [&["render"][..], &["check"]] {
        let out = run(ws.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr(&out),
            "error: failed to read overlays/dev.yaml: it is a directory, not a file; rename it or move it out of the overlays directory\n"
        );
    }
    assert_eq!(
        entries(&ws.path().join("rendered/dev")).len(),
        dev_files,
        "dev's files are kept"
    );

    // A FIFO in its place fails the same way, without waiting for a writer.
    fs::remove_dir(&dev).unwrap();
    mkfifo(&dev);
    fails(
        ws.path(),
        &["render"],
        "overlays/dev.yaml: it is a FIFO, not a file",
    );
    // And so does an extra manifest that is a FIFO.
    fs::remove_file(&dev).unwrap();
    fs::write(&dev, "extends: base\n").unwrap();
    mkfifo(&ws.path().join("overlays/prod/extra/pipe.yaml.hbs"));
    fails(
        ws.path(),
        &["render"],
        "overlays/prod/extra/pipe.yaml.hbs: it is a FIFO, not a file",
    );
}

#[test]
fn a_fifo_in_the_output_directory_is_never_opened() {
    let ws = shipped();
    ok(&run(ws.path(), &["render"]));
    let out = ws.path().join("rendered");
    mkfifo(&out.join("dev/pipe"));
    set_dev_replicas(ws.path(), 2);
    let log = ok(&run(ws.path(), &["render"]));
    assert!(
        log.contains("kiln: warning: kept rendered/dev/pipe: it is a FIFO, which kiln never opens"),
        "{log}"
    );
    use std::os::unix::fs::FileTypeExt as _;
    assert!(
        fs::symlink_metadata(out.join("dev/pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    ok(&run(ws.path(), &["check"]));

    // A FIFO where kiln renders a file: refused, never opened (render and check).
    fs::remove_file(out.join("dev/service-buildkitd.yaml")).unwrap();
    mkfifo(&out.join("dev/service-buildkitd.yaml"));
    for args in [&["render"][..], &["check"]] {
        let needle =
            "rendered/dev/service-buildkitd.yaml: it is a FIFO, which kiln never opens; move it away";
        fails(ws.path(), args, needle);
    }
    // A symlink there is refused too, and never followed.
    fs::remove_file(out.join("dev/service-buildkitd.yaml")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", out.join("dev/service-buildkitd.yaml")).unwrap();
    fails(
        ws.path(),
        &["render"],
        "it is a symlink, which kiln never follows",
    );
}

// ---------------------------------------------------------------- interrupted swaps

#[test]
fn only_a_kiln_tree_left_aside_is_recovered() {
    let ws = shipped();
    // A plain file named like a tree an interrupted swap left aside (pid above any pid_max).
    fs::write(ws.path().join(".rendered.kiln-old-999999999"), "not a tree\n").unwrap();
    ok(&run(ws.path(), &["render"]));
    assert!(ws.path().join("rendered").is_dir());
    assert_eq!(
        fs::read_to_string(ws.path().join(".rendered.kiln-old-999999999")).unwrap(),
        "not a tree\n"
    );

    // A kiln tree left aside by a render killed between the two renames of the fallback swap.
    fs::write(ws.path().join("rendered/NOTES.md"), "mine\n").unwrap();
    let aside = ws.path().join(".rendered.kiln-old-999999998");
    fs::rename(ws.path().join("rendered"), &aside).unwrap();
    let check = run(ws.path(), &["check"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "check reads the tree aside: {}",
        stderr(&check)
    );
    assert!(!ws.path().join("rendered").exists(), "check writes nothing");
    let log = ok(&run(ws.path(), &["render"]));
    assert!(
        log.contains("kiln: note: restored rendered from ./.rendered.kiln-old-999999998 (an earlier render was interrupted)"),
        "{log}"
    );
    assert_eq!(
        fs::read_to_string(ws.path().join("rendered/NOTES.md")).unwrap(),
        "mine\n"
    );
    assert!(!aside.exists());
}

#[test]
fn the_output_directory_never_disappears_during_a_render() {
    let ws = shipped();
    ok(&run(ws.path(), &["render"]));
    let out = ws.path().join("rendered");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (out, stop) = (out.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut looks = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert!(
                    fs::symlink_metadata(&out).is_ok(),
                    "rendered/ was missing after {looks} looks"
                );
                looks += 1;
            }
            looks
        })
    };
    for i in 0..20 {
        // A different dev each time, so that every render swaps the tree.
        set_dev_replicas(ws.path(), i % 2 + 2);
        ok(&run(ws.path(), &["render"]));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let looks = watcher.join().unwrap();
    assert!(looks > 100, "the watcher ran ({looks} looks)");
    assert_eq!(
        entries(ws.path()),
        ["overlays", "rendered"],
        "nothing left beside it"
    );
}

/// Run `kiln render` under strace, tracing the calls that sync and rename; its stderr and
/// the traced calls, one per line.
fn traced_render(strace: &Path, dir: &Path) -> (String, Vec<String>) {
    let out = Command::new(strace)
        .current_dir(dir)
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,syncfs,rename,renameat,renameat2",
            "-o",
            "trace.log",
        ])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .arg("render")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let trace = fs::read_to_string(dir.join("trace.log")).unwrap();
    fs::remove_file(dir.join("trace.log")).unwrap();
    (stderr(&out), trace.lines().map(str::to_string).collect())
}

#[test]
fn what_a_render_writes_is_synced_before_it_is_swapped_in() {
    let Some(strace) = support::tool("strace") else {
        return;
    };
    let ws = shipped();
    let position = |calls: &[String], what: &str| {
        calls
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what} in:\n{}", calls.join("\n")))
    };
    // The first render: one syncfs, the rename into place, then an fsync of the parent.
    let (_, calls) = traced_render(&strace, ws.path());
    let rename = position(&calls, ".rendered.kiln-tmp-");
    assert!(position(&calls, "syncfs(") < rename, "{}", calls.join("\n"));
    assert!(
        calls[rename..].iter().any(|l| l.contains("fsync(")),
        "{}",
        calls.join("\n")
    );

    // A render that changes a few files: the same, around the exchange.
    set_dev_replicas(ws.path(), 2);
    let (log, calls) = traced_render(&strace, ws.path());
    assert!(!log.contains(": 0 files changed"), "{log}");
    let exchange = position(&calls, "RENAME_EXCHANGE");
    assert!(position(&calls, "syncfs(") < exchange, "{}", calls.join("\n"));
    assert!(
        calls[exchange..].iter().any(|l| l.contains("fsync(")),
        "the parent, after the exchange: {}",
        calls.join("\n")
    );
}

// ---------------------------------------------------------------- stdout

/// Run `kiln args` with a stdout pipe whose reader is closed before kiln writes.
fn closed_stdout(dir: &Path, args: &[&str]) -> Output {
    let mut child = kiln()
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_stdout_ends_quietly_with_exit_0() {
    let ws = shipped();
    ok(&run(ws.path(), &["certs", "generate"]));
    ok(&run(ws.path(), &["render"]));
    fs::write(ws.path().join("rendered/dev/kustomization.yaml"), "# edited\n").unwrap();
    let plugins = ws.path().join("plugins");
    for args in [
        &["render", "--stdout"][..],
        &["schema"],
        &["check"],
        &["certs", "inspect", ".certs"],
        &["certs", "inspect", ".certs", "-o", "json"],
        &["completions", "bash"],
        &["--help"],
        // Writes with println!: the panic hook's path.
        &["install-plugin", "--dir", plugins.to_str().unwrap()],
    ] {
        let out = closed_stdout(ws.path(), args);
        let err = stderr(&out);
        let code = if args == ["check"] { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            !err.contains("Broken pipe") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    // `| head`: the reader goes away after the first lines.
    let out = Command::new("bash")
        .current_dir(ws.path())
        .args(["-o", "pipefail", "-c"])
        .arg(format!(
            "{} render --stdout | head -1",
            env!("CARGO_BIN_EXE_kiln")
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "---\n");
    assert_eq!(stderr(&out), "");
}

// ---------------------------------------------------------------- layouts

#[test]
fn one_gitops_layout_replaces_another_and_says_so() {
    let ws = shipped();
    ok(&run(ws.path(), &["render", "--gitops", "argocd"]));
    let log = ok(&run(ws.path(), &["render", "--gitops", "flux"]));
    assert!(
        log.contains(
            "kiln: note: removed rendered/argocd/dev.yaml and 2 more: one GitOps layout replaces another"
        ),
        "{log}"
    );
    assert!(!ws.path().join("rendered/argocd").exists());
    // check with the same flags passes; without them, it says how the tree was rendered.
    ok(&run(ws.path(), &["check", "--gitops", "flux"]));
    let check = run(ws.path(), &["check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stderr(&check)
            .contains("was it rendered with --gitops flux? Set gitops.flavor: flux in the overlays"),
        "{}",
        stderr(&check)
    );
}

// ---------------------------------------------------------------- check

#[test]
fn check_diffs_a_small_change_in_a_huge_file_but_only_reports_a_huge_one() {
    let tolerations = |value: &str| {
        let mut text = String::from("buildkit:\n  tolerations:\n");
        // Flow style keeps the overlay under its 1 MiB limit; rendered, each toleration is
        // four lines, so every value changed is a region far beyond the diff bound.
        for i in 0..12_000 {
            text.push_str(&format!(
                "  - {{key: k{i}, operator: Equal, value: {value}, effect: NoSchedule}}\n"
            ));
        }
        text
    };
    let ws = tempfile::tempdir().unwrap();
    fs::create_dir(ws.path().join("overlays")).unwrap();
    fs::write(ws.path().join("overlays/big.yaml"), tolerations("a")).unwrap();
    ok(&run(ws.path(), &["render"]));
    fs::write(ws.path().join("overlays/big.yaml"), tolerations("b")).unwrap();
    let check = run(ws.path(), &["check"]);
    assert_eq!(check.status.code(), Some(1));
    let diff = stdout(&check);
    assert!(
        diff.contains("--- a/big/deployment-buildkitd.yaml\n+++ b/big/deployment-buildkitd.yaml\ndiffers: "),
        "{}",
        &diff[..diff.len().min(2000)]
    );
    assert!(
        diff.contains("in the changed region (too many to diff: more than 10000); first difference at line")
    );
    assert!(
        diff.contains(":\n-        value: a\n+        value: b\n--- a/big/deployment-buildkitd.yaml"),
        "{}",
        &diff[..diff.len().min(2000)]
    );

    // One value changed in the same huge files: a real diff, with its hunk.
    let one = tolerations("a").replacen("value: a", "value: z", 1);
    fs::write(ws.path().join("overlays/big.yaml"), one).unwrap();
    let check = run(ws.path(), &["check"]);
    assert_eq!(check.status.code(), Some(1));
    let diff = stdout(&check);
    assert!(!diff.contains("too many to diff"), "{diff}");
    assert!(diff.contains("@@ -"), "{diff}");
    assert!(
        diff.contains("\n-        value: a\n+        value: z\n"),
        "{diff}"
    );
}
