//! Hostile input through the real binary (issue 15, the parsers and their errors): no abort,
//! no hang, an exit code of 1 (2 for a bad flag) with a one-line error that names the file,
//! field or flag in the user's terms, echoed values capped, and never a line of a private key.
//! Also replays the fuzz seeds and every crash the fuzzer found (fuzz/regressions/).

mod support;

#[path = "../fuzz/harness.rs"]
mod harness;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use support::{kiln, repo_root, stderr, stdout};

// ---------------------------------------------------------------- running kiln

/// A hang is a failure: no case may run longer than this (they take milliseconds).
const DEADLINE: Duration = Duration::from_secs(120);

/// Run kiln with `args` in `dir`, `stdin` piped in (empty when None), killed at [`DEADLINE`].
fn run(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = kiln()
        .current_dir(dir)
        .args(args)
        // No cluster, no kubeconfig: commands that would connect fail before reading input.
        .env("KUBECONFIG", dir.join("no-kubeconfig"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = stdin.unwrap_or_default().to_vec();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let started = Instant::now();
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out_pipe, &mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err_pipe, &mut buf);
        buf
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            child.kill().unwrap();
            panic!("kiln {args:?} hung for more than {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    writer.join().unwrap();
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// A scratch directory holding `files` (paths relative to it).
fn workspace(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, bytes) in files {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
    dir
}

/// The process ended normally (no signal: an abort is 134) with `code`, and printed exactly
/// one line, an `error:` line, to stderr. Returns that line.
#[track_caller]
fn one_line_error(out: &Output, code: i32) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status {:?}, stderr: {err}",
        out.status
    );
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err.trim_end().to_string()
}

/// A one-line render error (exit 1) for an `overlays/` built from `files`.
#[track_caller]
fn render_error(files: &[(&str, &[u8])]) -> String {
    let ws = workspace(files);
    one_line_error(&run(ws.path(), &["render", "--stdout"], None), 1)
}

/// Library and Rust debug wording that no error may show.
const NOT_USER_TERMS: [&str; 12] = [
    "from_str",
    "from_multiple",
    "budget breached",
    "Aliases {",
    "Nodes {",
    "Der(",
    "UnexpectedTag",
    "Parsing Error",
    "Some(",
    "Tag(",
    "stream did not contain valid UTF-8",
    "unexpected argument",
];

#[track_caller]
fn assert_user_terms(line: &str) {
    for word in NOT_USER_TERMS {
        assert!(!line.contains(word), "{word:?} in {line}");
    }
}

// ---------------------------------------------------------------- 1: templates

#[test]
fn recursive_partials_are_refused_not_a_stack_overflow() {
    let partial = r#"{{#*inline "p"}}{{> p}}{{/inline}}{{> p}}"#;
    // An overlay value: render and check.
    let overlay = format!("namespace: '{partial}'\n");
    let ws = workspace(&[("overlays/dev.yaml", overlay.as_bytes())]);
    for command in [&["render", "--stdout"][..], &["check"][..]] {
        let line = one_line_error(&run(ws.path(), command, None), 1);
        assert_eq!(
            line,
            "error: failed to render the template in overlays/dev.yaml:1: namespace: `{{#*inline \"p\"}}` is an inline partial; kiln templates have no partials: write the text out (column 1 of the value)"
        );
    }
    // An extra manifest.
    let line = render_error(&[
        ("overlays/dev.yaml", b""),
        (
            "overlays/dev/extra/p.yaml.hbs",
            format!("a: 1\n{partial}\n").as_bytes(),
        ),
    ]);
    assert_eq!(
        line,
        "error: failed to load overlays/dev/extra/p.yaml.hbs:2:1: template error: `{{#*inline \"p\"}}` is an inline partial; kiln templates have no partials: write the text out"
    );
    // A KRM spec value (the ResourceList's results, and one line on stderr).
    let list = format!(
        "apiVersion: config.kubernetes.io/v1\nkind: ResourceList\nitems: []\nfunctionConfig:\n  apiVersion: kiln.dev/v1alpha1\n  kind: BuildkitStack\n  metadata:\n    name: dev\n  spec:\n    tekton:\n      timeout: '{partial}'\n"
    );
    let out = run(ws.path(), &["krm"], Some(list.as_bytes()));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim_end(),
        "error: spec.tekton.timeout: `{{#*inline \"p\"}}` is an inline partial; kiln templates have no partials: write the text out (column 1 of the value)"
    );
}

#[test]
fn values_take_variables_only_and_manifests_four_blocks() {
    for (value, construct) in [
        ("{{#if overlay}}x{{/if}}", "`{{#if overlay}}` is a block"),
        ("{{> header}}", "`{{> header}}` is a partial"),
        ("{{* deco}}", "`{{* deco}}` is a decorator"),
        (
            "{{upper overlay}}",
            "`{{upper overlay}}` calls the helper `upper`, which kiln does not define",
        ),
    ] {
        let line = render_error(&[(
            "overlays/dev.yaml",
            format!("commonLabels:\n  a: '{value}'\n").as_bytes(),
        )]);
        assert!(
            line.starts_with(&format!(
                "error: failed to render the template in overlays/dev.yaml:2: commonLabels.a: {construct}"
            )),
            "{line}"
        );
    }
    // The four blocks work in an extra manifest.
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{{overlay}}\ndata:\n  {{#each buildkit}}\n  {{@key}}: \"{{this}}\"\n  {{/each}}\n  {{#if namespace}}\n  ns: \"{{namespace}}\"\n  {{/if}}\n  {{#unless tekton}}\n  {{/unless}}\n  {{#with kiln}}\n  kiln: \"{{version}}\"\n  {{/with}}\n";
    let ws = workspace(&[
        ("overlays/dev.yaml", b""),
        (
            "overlays/dev/extra/cm.yaml.hbs",
            manifest
                .replace("{{#unless tekton}}\n  {{/unless}}\n", "")
                .as_bytes(),
        ),
    ]);
    let out = run(ws.path(), &["render", "--stdout"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("serviceName: buildkitd"), "{text}");
    assert!(text.contains("ns: buildkit"), "{text}");
    assert!(
        text.contains(&format!("kiln: \"{}\"", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

#[test]
fn deep_nesting_fails_with_a_clear_error() {
    let deep = format!("{}x{}", "{{#if overlay}}".repeat(5_000), "{{/if}}".repeat(5_000));
    let line = render_error(&[
        ("overlays/dev.yaml", b""),
        ("overlays/dev/extra/deep.yaml.hbs", deep.as_bytes()),
    ]);
    assert_eq!(
        line,
        "error: failed to load overlays/dev/extra/deep.yaml.hbs:1:241: template error: blocks nest more than 16 deep, kiln's limit; flatten the template"
    );
    // YAML nested 5,000 deep, in block and flow style.
    let flow = format!("a: {}{}\n", "[".repeat(5_000), "]".repeat(5_000));
    let block: String = (0..500).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
    for text in [flow, block] {
        let line = render_error(&[("overlays/dev.yaml", text.as_bytes())]);
        assert!(line.contains("more than 64 levels deep"), "{line}");
    }
}

#[test]
fn a_field_that_feeds_a_variable_says_which_it_may_use() {
    let line = render_error(&[("overlays/dev.yaml", b"namespace: \"ns-{{namespace}}\"\n")]);
    assert_eq!(
        line,
        "error: failed to render the template in overlays/dev.yaml:1: namespace: `namespace` cannot be used here: fields that feed template variables (namespace, buildkit.version, buildkit.image, buildkit.serviceName, kiln.image) may use only overlay and kiln.version"
    );
    let line = render_error(&[("overlays/dev.yaml", b"buildkit:\n  image: \"{{nope}}\"\n")]);
    assert_eq!(
        line,
        "error: failed to render the template in overlays/dev.yaml:2: buildkit.image: unknown variable `nope` (available here: overlay and kiln.version)"
    );
}

#[test]
fn a_repeated_variable_renders_in_linear_time() {
    // 60,000 substitutions in a field that takes any text.
    let overlay = format!(
        "buildkit:\n  extraArgs: [\"--x={}\"]\n",
        "{{overlay}}".repeat(60_000)
    );
    let ws = workspace(&[("overlays/dev.yaml", overlay.as_bytes())]);
    let out = run(ws.path(), &["render", "--stdout"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("--x={}", "dev".repeat(60_000))));
    // In a label value it fails validation, with the value capped.
    let overlay = format!("commonLabels:\n  a: \"{}\"\n", "{{overlay}}".repeat(60_000));
    let line = render_error(&[("overlays/dev.yaml", overlay.as_bytes())]);
    assert!(line.len() < 300, "{line}");
    assert!(
        line.contains("(180000 characters) is not a valid label value"),
        "{line}"
    );
}

// ---------------------------------------------------------------- 3: limits

#[test]
fn super_linear_inputs_meet_documented_limits() {
    // 150,000 label keys: over the 1 MiB file limit.
    let labels: String = (0..150_000).map(|i| format!("  k{i}: v\n")).collect();
    let line = render_error(&[("overlays/dev.yaml", format!("commonLabels:\n{labels}").as_bytes())]);
    assert!(
        line.starts_with("error: failed to read overlays/dev.yaml: it is ")
            && line
                .ends_with("bytes; overlay files and extra templates may be at most 1048576 bytes (1 MiB)"),
        "{line}"
    );
    // Under the size limit but over the value limit.
    let items = format!("buildkit:\n  extraArgs: [{}]\n", "a,".repeat(260_000));
    let line = render_error(&[("overlays/dev.yaml", items.as_bytes())]);
    assert!(line.contains("holds more than 250000 values"), "{line}");
    // An alias bomb.
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9u8 {
        let (p, c) = ((b'a' + i - 1) as char, (b'a' + i) as char);
        bomb.push_str(&format!("{c}: &{c} [{}]\n", vec![format!("*{p}"); 10].join(", ")));
    }
    let line = render_error(&[("overlays/dev.yaml", bomb.as_bytes())]);
    assert!(line.contains("which looks like an alias bomb"), "{line}");
    assert_user_terms(&line);
    // Documents in an extra manifest.
    let docs = "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n".repeat(1_100);
    let line = render_error(&[
        ("overlays/dev.yaml", b""),
        ("overlays/dev/extra/m.yaml.hbs", docs.as_bytes()),
    ]);
    assert!(line.contains("holds more than 1024 documents"), "{line}");
    // Many labels under the limits: merged (base and child) and rendered.
    let base: String = (0..20_000).map(|i| format!("  b{i}: v\n")).collect();
    let child: String = (0..20_000).map(|i| format!("  b{i}: w\n  c{i}: v\n")).collect();
    let ws = workspace(&[
        ("overlays/base.yaml", format!("commonLabels:\n{base}").as_bytes()),
        (
            "overlays/dev.yaml",
            format!("extends: base\ncommonLabels:\n{child}").as_bytes(),
        ),
    ]);
    let out = run(ws.path(), &["render", "--stdout", "--overlay", "dev"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let namespace = stdout(&out)
        .split("\n---\n")
        .find(|d| d.contains("kind: Namespace"))
        .unwrap()
        .to_string();
    assert_eq!(namespace.matches(": w\n").count(), 20_000);
}

#[test]
fn pem_bundles_are_read_block_by_block() {
    let (_certs, dir) = generated(&["--algorithm", "ecdsa-p256"]);
    let ca = fs::read_to_string(dir.join("daemon/ca.pem")).unwrap();
    // 1,000 certificates and a corrupt block: the reading error names block 1001.
    let mut bundle = ca.repeat(1_000);
    bundle.push_str("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
    let ws = workspace(&[("bundle.pem", bundle.as_bytes())]);
    let line = one_line_error(&run(ws.path(), &["certs", "inspect", "bundle.pem"], None), 1);
    assert_eq!(
        line,
        "error: failed to read bundle.pem: failed to read PEM block 1001: its body is not valid base64"
    );
}

// ---------------------------------------------------------------- 4: errors a user can act on

#[test]
fn errors_name_the_problem_in_the_users_terms() {
    let (_certs, dir) = generated(&["--algorithm", "ecdsa-p256"]);
    let cert = fs::read_to_string(dir.join("daemon/cert.pem")).unwrap();
    let key = fs::read_to_string(dir.join("daemon/key.pem")).unwrap();
    let der = pem_body(&cert);
    // A CERTIFICATE block holding a key: x509-parser's `Der(UnexpectedTag …)`.
    let not_a_cert = key.replace("PRIVATE KEY", "CERTIFICATE");
    let ws = workspace(&[
        ("two-docs.yaml", b"namespace: a\n---\nnamespace: b\n"),
        ("cert.der", &der),
        ("der-tls/ca.pem", &der),
        ("der-tls/cert.pem", cert.as_bytes()),
        ("der-tls/key.pem", key.as_bytes()),
        ("Dockerfile", b"FROM scratch\n"),
        ("not-a-cert.pem", not_a_cert.as_bytes()),
        ("spaces.yaml", b"certs:\n  validity: \"1d \"\n"),
        ("overlays/dev.yaml", b"certs:\n  validity: \"90d \"\n"),
    ]);
    let cases: [(&[&str], i32, &str); 8] = [
        (
            &["status", "--config", "two-docs.yaml"],
            1,
            "error: failed to parse two-docs.yaml: line 3 column 1: holds more than one YAML document (a `---` line starts another); this input takes exactly one: remove the others",
        ),
        (
            &["certs", "inspect", "cert.der"],
            1,
            "error: failed to read cert.der: it is DER (binary), not PEM: kiln reads PEM; convert it with `openssl x509 -inform der -in cert.der -out cert.pem` (a key: `openssl pkey -inform der -in cert.der -out cert.pem`)",
        ),
        (
            &["status", "--config", "cert.der"],
            1,
            "error: failed to parse cert.der: it is binary data, not YAML text",
        ),
        (
            &[
                "build",
                "--tls-dir",
                "der-tls",
                "--image",
                "registry.example.com/a:1",
                "--addr",
                "tcp://127.0.0.1:9",
                "--context",
                ".",
            ],
            1,
            "error: failed to read der-tls/ca.pem: it is DER (binary), not PEM: kiln reads PEM; convert it with `openssl x509 -inform der -in der-tls/ca.pem -out der-tls/ca.converted.pem` (a key: `openssl pkey -inform der -in der-tls/ca.pem -out der-tls/ca.converted.pem`); check the Secret mount and its permissions",
        ),
        (
            &["certs", "inspect", "not-a-cert.pem"],
            1,
            "error: failed to read not-a-cert.pem: failed to parse certificate 1: its DER encoding is not an X.509 certificate",
        ),
        (
            &["status", "--config", "spaces.yaml"],
            1,
            "error: failed to parse spaces.yaml: line 2 column 13: invalid duration \"1d \": remove the spaces around it, such as 90d",
        ),
        (
            &["render", "--stdout"],
            1,
            "error: failed to load overlays/dev.yaml:2: certs.validity: invalid duration \"90d \": remove the spaces around it, such as 90d",
        ),
        (
            &["certs", "generate", "--validity", "-1d"],
            2,
            "error: invalid value '-1d' for '--validity <DURATION>': invalid duration \"-1d\": a duration cannot be negative; write a positive one, such as 90d",
        ),
    ];
    for (args, code, expected) in cases {
        let out = run(ws.path(), args, None);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        let line = stderr(&out).lines().next().unwrap_or_default().to_string();
        assert_eq!(line, expected, "{args:?}");
        assert_user_terms(&line);
        if code == 1 {
            one_line_error(&out, 1);
        }
    }
}

#[test]
fn a_huge_value_is_capped_in_the_error() {
    let huge = "x".repeat(1_000_000);
    for (overlay, echoed) in [
        (format!("namespace: {huge}\n"), true),
        (format!("buildkit:\n  replicas: {huge}\n"), true),
        (format!("certs:\n  validity: {huge}\n"), true),
        (format!("extends: {huge}\n"), true),
        (format!("commonLabels:\n  \"{huge}\": a\n"), false),
        (format!("{huge}: 1\n"), false),
    ] {
        // Under the 1 MiB file limit only just: the value is what could be echoed.
        let line = render_error(&[("overlays/dev.yaml", overlay.as_bytes())]);
        assert!(
            line.len() < 400,
            "{} bytes: {}",
            line.len(),
            &line[..400.min(line.len())]
        );
        assert_eq!(line.contains("(1000000 characters)"), echoed, "{line}");
    }
    let list = format!(
        "apiVersion: config.kubernetes.io/v1\nkind: ResourceList\nitems: []\nfunctionConfig:\n  apiVersion: {huge}\n"
    );
    let ws = workspace(&[]);
    let out = run(ws.path(), &["krm"], Some(list.as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).len() < 1_000, "{}", stderr(&out).len());
    // The list goes back out whole (the functionConfig too, as KRM requires); the results
    // that describe it stay short.
    let (back, _) = kiln::krm::parse_resource_list(&stdout(&out), "<out>").unwrap();
    let results = serde_json::to_string(&back.results).unwrap();
    assert!(results.len() < 2_000, "{} bytes of results", results.len());
}

#[test]
fn a_file_of_the_wrong_kind_is_not_echoed() {
    let passwd = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";
    let ws = workspace(&[
        ("passwd", passwd.as_bytes()),
        ("binary", &[0u8, 159, 146, 150, 0, 1]),
    ]);
    for (path, expected) in [
        (
            "passwd",
            "error: failed to read passwd: it holds no PEM block (-----BEGIN CERTIFICATE-----) and is not a Secret YAML",
        ),
        (
            "binary",
            "error: failed to read binary: it is binary data, not PEM text",
        ),
    ] {
        let line = one_line_error(&run(ws.path(), &["certs", "inspect", path], None), 1);
        assert_eq!(line, expected);
    }
    if Path::new("/etc/passwd").is_file() {
        let line = one_line_error(&run(ws.path(), &["certs", "inspect", "/etc/passwd"], None), 1);
        assert!(!line.contains("root:"), "{line}");
    }
    // Binary where YAML is expected.
    let line = one_line_error(&run(ws.path(), &["krm"], Some(&[0x30, 0x82, 0xff, 0x00])), 1);
    assert_eq!(
        line,
        "error: failed to read the ResourceList from stdin: it is binary data, not UTF-8 text; pass a config.kubernetes.io/v1 ResourceList in YAML or JSON"
    );
    let line = render_error(&[("overlays/dev.yaml", &[0xff, 0xfe, 0x00, 0x41])]);
    assert_eq!(
        line,
        "error: failed to read overlays/dev.yaml: it is not UTF-8 text (a binary file?); overlays are YAML"
    );
}

#[test]
fn a_broken_key_is_named_not_quoted() {
    // Found by the fuzzer: the pem crate's message quoted the input between BEGIN and END.
    let (_certs, dir) = generated(&["--algorithm", "ecdsa-p256"]);
    let cert = fs::read_to_string(dir.join("daemon/cert.pem")).unwrap();
    let ca = fs::read_to_string(dir.join("daemon/ca.pem")).unwrap();
    let key = "-----BEGIN PRIVATE KEY-----\nQUJDREVG\n-----END SECRET\nSTUFF-----\n";
    let ws = workspace(&[
        ("certs/ca.pem", ca.as_bytes()),
        ("certs/cert.pem", cert.as_bytes()),
        ("certs/key.pem", key.as_bytes()),
    ]);
    let line = one_line_error(&run(ws.path(), &["certs", "inspect", "certs"], None), 1);
    assert_eq!(
        line,
        "error: failed to read the key next to certs/cert.pem in certs: failed to read the private key: it is not valid PEM (a -----BEGIN line, base64, and the matching -----END line); expected an unencrypted PKCS#8 PEM (\"BEGIN PRIVATE KEY\")"
    );
}

// ---------------------------------------------------------------- 2: key material in errors

/// `kiln certs generate` output: (the tempdir, the certs directory).
fn generated(args: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = kiln()
        .current_dir(tmp.path())
        .args(["certs", "generate", "--out", "certs"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tmp.path().join("certs");
    (tmp, dir)
}

/// The DER inside a PEM text's first block.
fn pem_body(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

/// Every bad-input case that hands kiln a private key where something else belongs, with
/// the keys it uses. Each returns everything kiln printed (stderr, and stdout for KRM,
/// whose results carry the messages).
fn key_cases() -> (Vec<String>, Vec<(String, String)>) {
    let mut keys = Vec::new();
    let mut printed = Vec::new();
    for algorithm in ["ed25519", "ecdsa-p256", "ecdsa-p384", "rsa-2048"] {
        let (_certs, dir) = generated(&["--algorithm", algorithm]);
        let key = fs::read_to_string(dir.join("client/key.pem")).unwrap();
        let cert = fs::read_to_string(dir.join("client/cert.pem")).unwrap();
        let indented: String = key.lines().map(|l| format!("    {l}\n")).collect();
        let one_line = key.replace('\n', "\\n");
        let list = |spec: &str| {
            format!(
                "apiVersion: config.kubernetes.io/v1\nkind: ResourceList\nitems: []\nfunctionConfig:\n  apiVersion: kiln.dev/v1alpha1\n  kind: BuildkitStack\n  metadata:\n    name: dev\n  spec:\n{spec}"
            )
        };
        let secret = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{indented}  bad: [\n",
            cert.lines().map(|l| format!("    {l}\n")).collect::<String>()
        );
        let data_secret =
            format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  tls.key: |\n{indented}");
        let ws = workspace(&[
            ("key.pem", key.as_bytes()),
            ("key.yaml", key.as_bytes()),
            ("secret.yaml", secret.as_bytes()),
            ("data-secret.yaml", data_secret.as_bytes()),
            ("dir/ca.pem", key.as_bytes()),
            ("dir/cert.pem", key.as_bytes()),
            ("dir/key.pem", key.as_bytes()),
            ("as-overlay/overlays/dev.yaml", key.as_bytes()),
            (
                "in-value/overlays/dev.yaml",
                format!("namespace: |\n{indented}").as_bytes(),
            ),
            (
                "in-label/overlays/dev.yaml",
                format!("commonLabels:\n  a: \"{one_line}\"\n").as_bytes(),
            ),
            (
                "in-key/overlays/dev.yaml",
                format!("\"{one_line}\": 1\n").as_bytes(),
            ),
            (
                "in-extends/overlays/dev.yaml",
                format!("extends: \"{one_line}\"\n").as_bytes(),
            ),
            (
                "in-duration/overlays/dev.yaml",
                format!("certs:\n  validity: |\n{indented}").as_bytes(),
            ),
            ("in-extra/overlays/dev.yaml", b""),
            ("in-extra/overlays/dev/extra/k.yaml.hbs", key.as_bytes()),
            (
                "in-template/overlays/dev.yaml",
                format!("commonLabels:\n  a: |\n    {{{{> x}}}}\n{indented}").as_bytes(),
            ),
            (
                "in-typed/overlays/dev.yaml",
                format!("buildkit:\n  replicas: |\n{indented}").as_bytes(),
            ),
        ]);
        let d = ws.path();
        let cases: Vec<(&str, Vec<&str>, Option<String>)> = vec![
            ("krm < key.pem", vec!["krm"], Some(key.clone())),
            (
                "krm with the key in spec.namespace",
                vec!["krm"],
                Some(list(&format!(
                    "    namespace: |\n{}",
                    indented.replace("    ", "      ")
                ))),
            ),
            (
                "krm with the key in the functionConfig kind",
                vec!["krm"],
                Some(format!(
                    "apiVersion: config.kubernetes.io/v1\nkind: ResourceList\nfunctionConfig:\n  kind: \"{one_line}\"\n"
                )),
            ),
            (
                "krm with the key as the list kind",
                vec!["krm"],
                Some(format!(
                    "apiVersion: config.kubernetes.io/v1\nkind: \"{one_line}\"\n"
                )),
            ),
            ("krm legacy plugin config", vec!["krm", "key.pem"], None),
            ("status --config", vec!["status", "--config", "key.pem"], None),
            (
                "rotate --dry-run --config",
                vec!["rotate", "--dry-run", "--config", "key.pem"],
                None,
            ),
            (
                "status --config a .yaml key",
                vec!["status", "--config", "key.yaml"],
                None,
            ),
            (
                "certs inspect key.yaml",
                vec!["certs", "inspect", "key.yaml"],
                None,
            ),
            (
                "certs inspect a broken Secret",
                vec!["certs", "inspect", "secret.yaml"],
                None,
            ),
            (
                "certs inspect a Secret whose data is not base64",
                vec!["certs", "inspect", "data-secret.yaml"],
                None,
            ),
            (
                "certs inspect a directory of keys",
                vec!["certs", "inspect", "dir"],
                None,
            ),
            ("certs inspect key.pem", vec!["certs", "inspect", "key.pem"], None),
        ];
        for (name, args, stdin) in cases {
            let out = run(d, &args, stdin.as_deref().map(str::as_bytes));
            assert_ne!(out.status.code(), Some(0), "{name} succeeded");
            assert!(out.status.code().is_some(), "{name}: killed by a signal");
            // A KRM function writes its input back (functionConfig included) on stdout by
            // design; its messages are the results.
            let results = kiln::krm::parse_resource_list(&stdout(&out), "<out>")
                .map(|(list, _)| serde_json::to_string(&list.results).unwrap())
                .unwrap_or_else(|_| stdout(&out));
            printed.push((name.to_string(), format!("{}{results}", stderr(&out))));
        }
        for dir in [
            "as-overlay",
            "in-value",
            "in-label",
            "in-key",
            "in-extends",
            "in-duration",
            "in-extra",
            "in-template",
            "in-typed",
        ] {
            for command in [&["render", "--stdout"][..], &["check"][..]] {
                let out = run(&d.join(dir), command, None);
                assert!(
                    out.status.code().is_some_and(|c| c != 0),
                    "{dir} {command:?}: {:?}",
                    out.status
                );
                printed.push((format!("{} in {dir}", command[0]), stderr(&out)));
            }
        }
        keys.push(key);
    }
    (keys, printed)
}

#[test]
fn no_error_output_shows_a_private_key_line() {
    let (keys, printed) = key_cases();
    let secret_lines: Vec<&str> = keys
        .iter()
        .flat_map(|key| key.lines())
        .filter(|line| !line.starts_with("-----") && line.len() >= 8)
        .collect();
    assert!(secret_lines.len() >= 8, "the keys have body lines");
    assert!(printed.len() > 40, "every case ran");
    for (case, text) in &printed {
        assert!(
            !text.contains("PRIVATE KEY-----"),
            "{case} prints a key marker: {text}"
        );
        for secret in &secret_lines {
            assert!(!text.contains(secret), "{case} prints a line of the key: {text}");
            // Nor the first 16 characters of one (a capped value would show a prefix).
            assert!(
                !text.contains(&secret[..16]),
                "{case} prints part of a key line: {text}"
            );
        }
        for line in text.lines().filter(|l| l.starts_with("error: ")) {
            assert_user_terms(line);
            assert!(line.len() < 2_200, "{case}: {} bytes", line.len());
        }
    }
}

// ---------------------------------------------------------------- 5: fuzz seeds and crashes

/// Every file of `fuzz/<kind>/<target>/`.
fn fuzz_inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = repo_root().join("fuzz").join(kind).join(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn fuzz_seeds_and_every_crash_found_replay_cleanly() {
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 5] = [
        ("overlay", harness::overlay),
        ("krm", harness::krm),
        ("pem", harness::pem),
        ("template", harness::template),
        ("history", harness::history),
    ];
    let mut replayed = 0;
    for (target, check) in targets {
        let seeds = fuzz_inputs("seeds", target);
        assert!(!seeds.is_empty(), "fuzz/seeds/{target} is empty");
        for (path, bytes) in seeds.iter().chain(&fuzz_inputs("regressions", target)) {
            let result = std::panic::catch_unwind(|| check(bytes));
            assert!(result.is_ok(), "{} fails its fuzz check", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= 12, "{replayed}");
}

/// The fuzz crate stays out of the main build: its own workspace and lock.
#[test]
fn the_fuzz_crate_is_its_own_workspace() {
    let manifest = fs::read_to_string(repo_root().join("fuzz/Cargo.toml")).unwrap();
    assert!(
        manifest.contains("\n[workspace]\n"),
        "fuzz/Cargo.toml must declare its own workspace"
    );
    assert!(repo_root().join("fuzz/Cargo.lock").is_file());
    let main = fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    assert!(
        !main.contains("fuzz"),
        "the main Cargo.toml must not name the fuzz crate"
    );
    // And scripts/test runs every target for a bounded time.
    let test = fs::read_to_string(repo_root().join("scripts/test")).unwrap();
    assert!(
        test.contains("scripts/fuzz"),
        "scripts/test runs the fuzz targets"
    );
}
