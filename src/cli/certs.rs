//! `kiln certs generate` and `kiln certs inspect`: the file edge of the pure PKI core.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use time::OffsetDateTime;

use super::UsageError;
use crate::duration::Duration;
use crate::overlay::Overlay;
use crate::pki::{
    self, Algorithm, CaRequest, CertSummary, Issued, LeafKind, LeafRequest, SecretFormat, Serial, Validity,
};

/// `kiln certs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a CA, a daemon and a client certificate, as files and as Secret manifests.
    ///
    /// A drop-in for BuildKit's create-certs.sh: writes daemon/{ca,cert,key}.pem,
    /// client/{ca,cert,key}.pem, buildkit-daemon-certs.yaml, buildkit-client-certs.yaml
    /// and buildkit-ca.yaml (the CA certificate and key, kept for rotation).
    Generate(GenerateArgs),
    /// Show certificates and check expiry, chains and keys; exit 1 on any problem.
    Inspect(InspectArgs),
}

/// Arguments of `kiln certs generate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kiln certs generate --namespace buildkit --out .certs
  kiln certs generate --san builder.example.com --san 10.0.0.7 --format tls
  kiln certs generate --overlay prod --out .certs-prod")]
pub struct GenerateArgs {
    /// The namespace buildkitd runs in: goes into the SANs and the Secrets [default: buildkit, or the overlay's].
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The buildkitd Service name [default: buildkitd, or the overlay's].
    #[arg(long)]
    pub service: Option<String>,
    /// An extra DNS name or IP address for the daemon certificate (repeatable; added to the overlay's).
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
    /// The directory to create.
    #[arg(long, default_value = ".certs")]
    pub out: PathBuf,
    /// File and Secret key names: pem (ca.pem/cert.pem/key.pem) or tls (ca.crt/tls.crt/tls.key) [default: pem].
    #[arg(long, value_enum)]
    pub format: Option<SecretFormat>,
    /// The key algorithm for all three certificates [default: ecdsa-p256].
    #[arg(long, value_enum)]
    pub algorithm: Option<Algorithm>,
    /// Lifetime of the CA, such as 5y [default: 5y].
    // Hyphen values reach the Duration parser, which says why `-1d` is wrong.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub ca_validity: Option<Duration>,
    /// Lifetime of the daemon and client certificates, such as 90d [default: 90d].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub validity: Option<Duration>,
    /// Take the certificate settings (algorithm, validity, extra SANs, format, Secret names,
    /// namespace, Service name) from this overlay; flags given explicitly win.
    #[arg(long, value_name = "NAME")]
    pub overlay: Option<String>,
    /// The directory holding the overlay files.
    #[arg(long, value_name = "DIR", default_value = "overlays")]
    pub overlays: PathBuf,
    /// Replace the output directory if it exists (only one that holds nothing but what this command writes).
    #[arg(long)]
    pub force: bool,
    /// Issue as if the time were this (RFC 3339), instead of the system clock.
    #[arg(long, value_name = "RFC3339", value_parser = super::parse_time)]
    pub now: Option<OffsetDateTime>,
}

/// How `kiln certs inspect` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table.
    #[default]
    Table,
    /// A JSON array, one object per certificate.
    Json,
}

/// Arguments of `kiln certs inspect`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kiln certs inspect .certs
  kiln certs inspect .certs/buildkit-daemon-certs.yaml -o json
  kubectl get secret buildkit-client-certs -o yaml > s.yaml && kiln certs inspect s.yaml")]
pub struct InspectArgs {
    /// A directory (as written by `kiln certs generate`, or holding ca/cert/key files),
    /// a PEM file, or a Secret YAML file (pem or tls key names).
    pub path: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Check validity as of this time (RFC 3339), instead of the system clock.
    #[arg(long, value_name = "RFC3339", value_parser = super::parse_time)]
    pub now: Option<OffsetDateTime>,
}

/// Run a `kiln certs` subcommand.
pub fn certs(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::Generate(args) => generate(args),
        CertsCommand::Inspect(args) => inspect(args),
    }
}

// ---------------------------------------------------------------- generate

/// The validated settings of one `kiln certs generate` run.
#[derive(Debug, Clone, PartialEq)]
struct GenerateConfig {
    namespace: String,
    service: String,
    extra_sans: Vec<String>,
    format: SecretFormat,
    algorithm: Algorithm,
    ca_validity: Duration,
    validity: Duration,
    ca_secret: String,
    daemon_secret: String,
    client_secret: String,
}

impl GenerateConfig {
    /// Overlay settings (or the defaults), then the flags on top.
    fn new(args: &GenerateArgs, overlay: &Overlay) -> Result<Self, UsageError> {
        let certs = &overlay.certs;
        let mut extra_sans = certs.extra_sans.clone();
        extra_sans.extend(args.sans.iter().cloned());
        let config = Self {
            namespace: args
                .namespace
                .clone()
                .unwrap_or_else(|| overlay.namespace.clone()),
            service: args
                .service
                .clone()
                .unwrap_or_else(|| overlay.buildkit.service_name.clone()),
            extra_sans,
            format: args.format.unwrap_or(certs.format),
            algorithm: args.algorithm.unwrap_or(certs.algorithm),
            ca_validity: args.ca_validity.unwrap_or(certs.ca_validity),
            validity: args.validity.unwrap_or(certs.validity),
            ca_secret: certs.secrets.ca.clone(),
            daemon_secret: certs.secrets.daemon.clone(),
            client_secret: certs.secrets.client.clone(),
        };
        for (flag, value) in [
            ("--ca-validity", config.ca_validity),
            ("--validity", config.validity),
        ] {
            if value.is_zero() {
                return Err(UsageError(format!(
                    "invalid {flag} {value}: a certificate must be valid for longer than zero, such as 90d"
                )));
            }
        }
        if config.validity > config.ca_validity {
            return Err(UsageError(format!(
                "invalid --validity {}: the daemon and client certificates would outlive the CA \
                 (--ca-validity {}); shorten --validity or lengthen --ca-validity",
                config.validity, config.ca_validity
            )));
        }
        Ok(config)
    }
}

/// A file to write, relative to the output directory.
#[derive(Clone)]
struct OutFile {
    path: PathBuf,
    contents: Vec<u8>,
}

/// Everything `generate` writes, built in memory before anything touches the disk.
struct Generated {
    files: Vec<OutFile>,
    ca: CertSummary,
    daemon: CertSummary,
    client: CertSummary,
}

fn secret(name: &str, config: &GenerateConfig, component: &str, data: [(&str, &str); 3]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(config.namespace.clone()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/component".to_string(), component.to_string()),
                ("app.kubernetes.io/managed-by".to_string(), "kiln".to_string()),
                ("app.kubernetes.io/part-of".to_string(), "buildkit".to_string()),
            ])),
            ..Default::default()
        },
        type_: Some(config.format.secret_type().to_string()),
        data: Some(
            data.into_iter()
                .map(|(key, value)| (key.to_string(), ByteString(value.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Issue the CA and both leaves and lay out every file. Pure apart from key generation.
fn build_generated(config: &GenerateConfig, now: OffsetDateTime) -> anyhow::Result<Generated> {
    let usage = |e: pki::PkiError| anyhow::Error::new(UsageError(e.to_string()));
    let sans = pki::daemon_sans(&config.service, &config.namespace, &config.extra_sans).map_err(usage)?;
    let ca_window = Validity::starting_at("the CA", now, config.ca_validity).map_err(usage)?;
    let leaf_window = Validity::starting_at("the leaf certificates", now, config.validity).map_err(usage)?;

    let ca_serial = Serial::random()?;
    let ca = pki::issue_ca(&CaRequest {
        common_name: pki::ca_common_name(&config.namespace, ca_serial),
        algorithm: config.algorithm,
        not_before: ca_window.not_before,
        not_after: ca_window.not_after,
        serial: ca_serial,
    })?;
    let leaf = |kind, common_name: &str, sans| -> anyhow::Result<Issued> {
        Ok(pki::issue_leaf(
            &ca,
            &LeafRequest {
                kind,
                common_name: common_name.to_string(),
                sans,
                algorithm: config.algorithm,
                not_before: leaf_window.not_before,
                not_after: leaf_window.not_after,
                serial: Serial::random()?,
            },
        )?)
    };
    let daemon = leaf(LeafKind::Daemon, &config.service, sans)?;
    let client = leaf(LeafKind::Client, "buildkit-client", Vec::new())?;

    let (ca_name, cert_name, key_name) = config.format.key_names();
    let mut files = Vec::new();
    for (dir, issued) in [("daemon", &daemon), ("client", &client)] {
        for (name, text) in [
            (ca_name, &ca.cert_pem),
            (cert_name, &issued.cert_pem),
            (key_name, &issued.key_pem),
        ] {
            files.push(OutFile {
                path: Path::new(dir).join(name),
                contents: text.clone().into_bytes(),
            });
        }
    }
    let secrets = [
        (
            "buildkit-daemon-certs.yaml",
            secret(
                &config.daemon_secret,
                config,
                "daemon-certs",
                [
                    (ca_name, &ca.cert_pem),
                    (cert_name, &daemon.cert_pem),
                    (key_name, &daemon.key_pem),
                ],
            ),
        ),
        (
            "buildkit-client-certs.yaml",
            secret(
                &config.client_secret,
                config,
                "client-certs",
                [
                    (ca_name, &ca.cert_pem),
                    (cert_name, &client.cert_pem),
                    (key_name, &client.key_pem),
                ],
            ),
        ),
        // The CA Secret uses the same key names: the trust bundle, the current CA
        // certificate and its key, so rotation can add a second CA to the bundle.
        (
            "buildkit-ca.yaml",
            secret(
                &config.ca_secret,
                config,
                "ca",
                [
                    (ca_name, &ca.cert_pem),
                    (cert_name, &ca.cert_pem),
                    (key_name, &ca.key_pem),
                ],
            ),
        ),
    ];
    for (file, secret) in secrets {
        files.push(OutFile {
            path: PathBuf::from(file),
            contents: crate::yaml::to_string(&secret)?.into_bytes(),
        });
    }
    Ok(Generated {
        files,
        ca: ca.summary()?,
        daemon: daemon.summary()?,
        client: client.summary()?,
    })
}

fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let overlay = match &args.overlay {
        Some(name) => load_overlay(&args.overlays, name)?,
        None => Overlay::default(),
    };
    let config = GenerateConfig::new(&args, &overlay)?;
    let now = args.now.unwrap_or_else(OffsetDateTime::now_utc);
    let out = &args.out;
    match fs::symlink_metadata(out) {
        Ok(meta) if !meta.is_dir() => {
            bail!(UsageError(format!(
                "--out {} exists and is not a directory; choose another --out",
                out.display()
            )))
        }
        Ok(_) if !args.force => bail!(UsageError(format!(
            "--out {} already exists; pass --force to replace it",
            out.display()
        ))),
        Ok(_) => {
            if let Some(stranger) = foreign_entry(out)? {
                bail!(UsageError(format!(
                    "--out {} holds {}, which kiln does not write; --force only replaces a directory \
                     written by `kiln certs generate`: choose another --out or remove it yourself",
                    out.display(),
                    stranger.display()
                )));
            }
        }
        Err(_) => {}
    }
    let generated = build_generated(&config, now)?;
    write_atomically(out, &generated.files)?;

    let mut report = format!(
        "wrote {} ({}, namespace {}, {} key names):\n",
        out.display(),
        config.algorithm,
        config.namespace,
        match config.format {
            SecretFormat::Pem => "pem",
            SecretFormat::Tls => "tls",
        }
    );
    for file in &generated.files {
        let _ = writeln!(report, "  {}", out.join(&file.path).display());
    }
    for (what, summary) in [
        ("CA", &generated.ca),
        ("daemon", &generated.daemon),
        ("client", &generated.client),
    ] {
        let _ = writeln!(
            report,
            "{what:<7} {:<40} expires {}",
            summary.subject,
            pki::rfc3339(summary.not_after)
        );
    }
    let _ = writeln!(report, "daemon SANs: {}", generated.daemon.sans.join(", "));
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// The first entry of `dir` that `kiln certs generate` does not write, if any: `--force`
/// must never delete a directory that holds anything else (think `--out ~`).
fn foreign_entry(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    const TOP: [&str; 5] = [
        "daemon",
        "client",
        "buildkit-daemon-certs.yaml",
        "buildkit-client-certs.yaml",
        "buildkit-ca.yaml",
    ];
    let list = |dir: &Path| -> anyhow::Result<Vec<(PathBuf, String, bool)>> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("failed to list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("failed to list {}", dir.display()))?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            entries.push((
                entry.path(),
                entry.file_name().to_string_lossy().into_owned(),
                is_dir,
            ));
        }
        entries.sort();
        Ok(entries)
    };
    for (path, name, is_dir) in list(dir)? {
        let expected_dir = name == "daemon" || name == "client";
        if !TOP.contains(&name.as_str()) || is_dir != expected_dir {
            return Ok(Some(path));
        }
        if is_dir {
            for (inner, inner_name, inner_is_dir) in list(&path)? {
                let known = NAME_SETS
                    .iter()
                    .any(|(ca, cert, key)| [ca, cert, key].contains(&&inner_name.as_str()));
                if inner_is_dir || !known {
                    return Ok(Some(inner));
                }
            }
        }
    }
    Ok(None)
}

/// Read one overlay with its `extends:` chain merged and its templates rendered.
fn load_overlay(dir: &Path, name: &str) -> anyhow::Result<Overlay> {
    Ok(crate::overlay::load(dir, name)?.overlay)
}

fn random_suffix() -> anyhow::Result<String> {
    Ok(Serial::random()?.to_hex())
}

/// Write `files` into a fresh 0700 directory next to `out`, then rename it to `out`
/// (replacing an existing `out`). On any failure the temporary directory is removed
/// and `out` is left as it was.
fn write_atomically(out: &Path, files: &[OutFile]) -> anyhow::Result<()> {
    let (file_name, parent) = crate::output::name_and_parent(out).ok_or_else(|| {
        UsageError(format!(
            "invalid --out {}: name a new directory, such as .certs",
            out.display()
        ))
    })?;
    let tmp = parent.join(format!(".{file_name}.kiln-tmp-{}", random_suffix()?));
    fs::DirBuilder::new().mode(0o700).create(&tmp).with_context(|| {
        format!(
            "failed to create {}: is {} a writable directory?",
            tmp.display(),
            parent.display()
        )
    })?;
    let result = write_tree(&tmp, files).and_then(|()| replace_dir(&tmp, out));
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn write_tree(root: &Path, files: &[OutFile]) -> anyhow::Result<()> {
    for file in files {
        let path = root.join(&file.path);
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        // Every file holds a key or sits next to one: owner-only.
        let mut handle = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        handle
            .write_all(&file.contents)
            .and_then(|()| handle.sync_all())
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(())
}

fn replace_dir(tmp: &Path, out: &Path) -> anyhow::Result<()> {
    let parent = tmp.parent().unwrap_or(Path::new("."));
    let old = parent.join(format!(".kiln-old-{}", random_suffix()?));
    Ok(crate::output::swap(out, tmp, &old)?)
}

// ---------------------------------------------------------------- inspect

/// Certificates read from one place: a trust bundle, certificates, maybe their key.
/// No `Debug`: it holds a private key.
struct Source {
    /// Shown in the name column: a path, or `file.yaml:secret-name`.
    name: String,
    /// The CA bundle (ca.pem / ca.crt), when the source has one.
    bundle: Option<(String, String)>,
    /// The certificate (cert.pem / tls.crt) or the PEM file itself.
    cert: Option<(String, String)>,
    /// The private key (key.pem / tls.key).
    key: Option<String>,
}

/// One row of the inspect output.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    /// Where the certificate came from.
    name: String,
    #[serde(flatten)]
    summary: CertSummary,
    /// Whole days until not-after (negative once expired).
    days_left: i64,
    /// Valid now (between not-before and not-after).
    valid: bool,
    /// Signed by a CA in the bundle, both valid now; None when there is no CA to check against.
    chain_ok: Option<bool>,
    /// Why the chain check failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    chain_error: Option<String>,
    /// Whether the key next to the certificate belongs to it (None: no key there).
    #[serde(skip_serializing_if = "Option::is_none")]
    key_matches: Option<bool>,
}

/// The (CA bundle, certificate, key) names of every [`SecretFormat`], tried in this order.
const NAME_SETS: [(&str, &str, &str); 2] = [SecretFormat::Pem.key_names(), SecretFormat::Tls.key_names()];

/// Read a PEM or Secret YAML file: at most [`pki::MAX_PEM_BYTES`] (a device or a huge file
/// stops there), text (DER is named as such, with the openssl command that converts it).
fn read_text(path: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let context = || format!("failed to read {}", path.display());
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|file| file.take(pki::MAX_PEM_BYTES as u64 + 1).read_to_end(&mut bytes))
        .with_context(context)?;
    pki::pem_text(bytes, &path.display().to_string()).with_context(context)
}

/// A directory holding ca/cert/key files under either naming scheme, if it does.
fn source_from_dir(dir: &Path) -> anyhow::Result<Option<Source>> {
    for (ca, cert, key) in NAME_SETS {
        if !dir.join(cert).is_file() && !dir.join(ca).is_file() {
            continue;
        }
        let read = |name: &str| -> anyhow::Result<Option<(String, String)>> {
            let path = dir.join(name);
            if path.is_file() {
                Ok(Some((path.display().to_string(), read_text(&path)?)))
            } else {
                Ok(None)
            }
        };
        return Ok(Some(Source {
            name: dir.display().to_string(),
            bundle: read(ca)?,
            cert: read(cert)?,
            key: read(key)?.map(|(_, text)| text),
        }));
    }
    Ok(None)
}

fn sources_from_yaml(path: &Path, text: &str) -> anyhow::Result<Vec<Source>> {
    let secrets: Vec<Secret> = crate::yaml::from_str_multi(text, &path.display().to_string())?;
    let mut sources = Vec::new();
    let several = secrets.len() > 1;
    for secret in secrets {
        let secret_name = secret.metadata.name.clone().unwrap_or_default();
        // The Secret name is only needed to tell several Secrets of one file apart.
        let label = if several {
            format!("{}:{secret_name}", path.display())
        } else {
            path.display().to_string()
        };
        let mut data: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in secret.data.unwrap_or_default() {
            let text = String::from_utf8(value.0)
                .with_context(|| format!("failed to read {label}: data key {key} is not UTF-8 PEM"))?;
            data.insert(key, text);
        }
        data.extend(secret.string_data.unwrap_or_default());
        let Some((ca, cert, key)) = NAME_SETS
            .into_iter()
            .find(|(ca, cert, _)| data.contains_key(*cert) || data.contains_key(*ca))
        else {
            bail!(
                "failed to read {label}: the Secret has none of the keys ca.pem/cert.pem/key.pem or ca.crt/tls.crt/tls.key"
            );
        };
        sources.push(Source {
            bundle: data.get(ca).map(|t| (format!("{label}:{ca}"), t.clone())),
            cert: data.get(cert).map(|t| (format!("{label}:{cert}"), t.clone())),
            key: data.get(key).cloned(),
            name: label,
        });
    }
    Ok(sources)
}

fn sources_from_file(path: &Path) -> anyhow::Result<Vec<Source>> {
    // cert.pem or tls.crt inside a certificate directory: check it with its CA and key.
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if let Some(dir) = path.parent()
        && NAME_SETS
            .iter()
            .any(|(ca, cert, _)| *cert == file_name && dir.join(ca).is_file())
        && let Some(source) = source_from_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })?
    {
        return Ok(vec![source]);
    }
    let text = read_text(path)?;
    if text.contains("-----BEGIN") {
        // A PEM file: its certificates, chained against the CAs in the same file,
        // and the key stored with them, if any.
        Ok(vec![Source {
            name: path.display().to_string(),
            bundle: None,
            key: key_block(&text),
            cert: Some((path.display().to_string(), text)),
        }])
    } else {
        // A file that is neither (say /etc/passwd) is not quoted back: only a Secret's errors are.
        let secrets =
            crate::yaml::document_kinds(&text).is_some_and(|kinds| kinds.iter().any(|k| k == "Secret"));
        sources_from_yaml(path, &text).map_err(|e| {
            let detail = if secrets { format!(" ({e:#})") } else { String::new() };
            anyhow::anyhow!(
                "failed to read {}: it holds no PEM block (-----BEGIN CERTIFICATE-----) and is not a Secret YAML{detail}",
                path.display()
            )
        })
    }
}

fn collect_sources(path: &Path) -> anyhow::Result<Vec<Source>> {
    let meta = fs::metadata(path).with_context(|| format!("failed to read {}", path.display()))?;
    if !meta.is_dir() {
        return sources_from_file(path);
    }
    if let Some(source) = source_from_dir(path)? {
        return Ok(vec![source]);
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .with_context(|| format!("failed to list {}", path.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("failed to list {}", path.display()))?;
    entries.sort();
    let mut sources = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            sources.extend(source_from_dir(&entry)?);
        } else if matches!(entry.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            sources.extend(sources_from_yaml(&entry, &read_text(&entry)?)?);
        } else if matches!(entry.extension().and_then(|e| e.to_str()), Some("pem" | "crt")) {
            sources.extend(sources_from_file(&entry)?);
        }
    }
    if sources.is_empty() {
        bail!(
            "failed to find certificates in {}: expected ca/cert/key files (pem or tls names), Secret YAML or PEM files",
            path.display()
        );
    }
    Ok(sources)
}

fn parse_named(name: &str, text: &str) -> anyhow::Result<Vec<CertSummary>> {
    pki::parse_bundle(text).with_context(|| format!("failed to read {name}"))
}

/// The first private key block (`BEGIN … PRIVATE KEY`) of a PEM text.
fn key_block(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") && line.ends_with("PRIVATE KEY-----") {
            inside = true;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
            if line.starts_with("-----END ") {
                return Some(out);
            }
        }
    }
    None
}

/// Split a PEM text into one PEM string per certificate (for chain checks).
fn split_certs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            inside = true;
            current.clear();
        }
        if inside {
            current.push_str(line);
            current.push('\n');
        }
        if line.starts_with("-----END CERTIFICATE-----") {
            inside = false;
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

fn rows_for(source: &Source, now: OffsetDateTime, seen: &mut BTreeSet<String>) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let row = |name: &str,
               mut summary: CertSummary,
               pem: &str,
               trust: &str,
               key: Option<&str>|
     -> anyhow::Result<Row> {
        let has_ca = pki::parse_bundle(trust)?.iter().any(|c| c.is_ca);
        if summary.issuer_fingerprint.is_none() {
            // The signer among the trusted CAs, found by signature whatever the dates say.
            let with_trust = pki::parse_bundle(&pki::bundle(&[pem, trust]))?;
            summary.issuer_fingerprint = with_trust.first().and_then(|c| c.issuer_fingerprint.clone());
        }
        let chain = if has_ca {
            Some(pki::verify_chain(pem, trust, now))
        } else {
            None
        };
        let key_matches = match key {
            Some(key) => Some(
                pki::key_matches(pem, key)
                    .with_context(|| format!("failed to read the key next to {name} in {}", source.name))?,
            ),
            None => None,
        };
        Ok(Row {
            name: name.to_string(),
            days_left: (summary.not_after - now).whole_days(),
            valid: summary.not_before <= now && now <= summary.not_after,
            summary,
            chain_ok: chain.as_ref().map(Result::is_ok),
            chain_error: chain.and_then(Result::err).map(|e| e.to_string()),
            key_matches,
        })
    };
    if let Some((name, text)) = &source.cert {
        let summaries = parse_named(name, text)?;
        let trust = match &source.bundle {
            Some((_, bundle)) => bundle.clone(),
            None => text.clone(),
        };
        for (i, (summary, pem)) in summaries.into_iter().zip(split_certs(text)).enumerate() {
            // The key belongs to the first certificate of the file.
            let key = if i == 0 { source.key.as_deref() } else { None };
            seen.insert(summary.fingerprint.clone());
            rows.push(row(name, summary, &pem, &trust, key)?);
        }
    }
    // Each CA of a bundle is shown once, however many sources carry it.
    if let Some((name, text)) = &source.bundle {
        for (summary, pem) in parse_named(name, text)?.into_iter().zip(split_certs(text)) {
            if seen.insert(summary.fingerprint.clone()) {
                rows.push(row(name, summary, &pem, &pem, None)?);
            }
        }
    }
    Ok(rows)
}

fn usage_text(summary: &CertSummary) -> String {
    let mut usage = summary.extended_key_usage.clone();
    if summary.is_ca {
        usage.insert(0, "CA".into());
    }
    if usage.is_empty() {
        "-".into()
    } else {
        usage.join(",")
    }
}

fn render_table(rows: &[Row]) -> String {
    let header = [
        "NAME",
        "SUBJECT",
        "SANS",
        "USAGE",
        "NOT AFTER",
        "DAYS LEFT",
        "ISSUER",
        "CHAIN",
        "KEY",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.summary.subject.clone(),
                if r.summary.sans.is_empty() {
                    "-".into()
                } else {
                    r.summary.sans.join(",")
                },
                usage_text(&r.summary),
                pki::rfc3339(r.summary.not_after),
                r.days_left.to_string(),
                r.summary.issuer.clone(),
                match r.chain_ok {
                    Some(true) => "ok".into(),
                    Some(false) => "FAIL".into(),
                    None => "-".into(),
                },
                match r.key_matches {
                    Some(true) => "ok".into(),
                    Some(false) => "MISMATCH".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[String]| {
        let text: Vec<String> = cols.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&header.map(String::from));
    for row in &cells {
        line(row);
    }
    out
}

/// One line per problem found; empty when all is well.
fn problems(rows: &[Row], now: OffsetDateTime) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows {
        let what = format!("{} ({})", r.name, r.summary.subject);
        if r.summary.not_after < now {
            out.push(format!("{what} expired at {}", pki::rfc3339(r.summary.not_after)));
        } else if r.summary.not_before > now {
            out.push(format!(
                "{what} is not valid before {}",
                pki::rfc3339(r.summary.not_before)
            ));
        } else if let Some(err) = &r.chain_error {
            out.push(format!("{what} does not chain: {err}"));
        }
        if r.key_matches == Some(false) {
            out.push(format!("{what}: the private key does not match the certificate"));
        }
    }
    out
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let now = args.now.unwrap_or_else(OffsetDateTime::now_utc);
    let mut rows = Vec::new();
    let mut seen = BTreeSet::new();
    for source in collect_sources(&args.path)? {
        rows.extend(rows_for(&source, now, &mut seen)?);
    }
    match args.output {
        OutputFormat::Table => print!("{}", render_table(&rows)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
    }
    let problems = problems(&rows, now);
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        eprintln!("problem: {problem}");
    }
    eprintln!(
        "error: {} problem(s) found in {}",
        problems.len(),
        args.path.display()
    );
    Ok(ExitCode::from(super::EXIT_FAILURE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> GenerateArgs {
        let cli = crate::cli::Cli::try_parse_from(["kiln", "certs", "generate"].iter().chain(extra)).unwrap();
        match cli.command {
            crate::cli::Command::Certs(CertsCommand::Generate(args)) => args,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn flags_win_over_the_overlay() {
        let mut overlay = Overlay {
            namespace: "ci".into(),
            ..Default::default()
        };
        overlay.certs.extra_sans = vec!["a.example.com".into()];
        overlay.certs.algorithm = Algorithm::Ed25519;
        let config = GenerateConfig::new(
            &args(&["--san", "b.example.com", "--algorithm", "ecdsa-p384"]),
            &overlay,
        )
        .unwrap();
        assert_eq!(config.namespace, "ci");
        assert_eq!(config.extra_sans, ["a.example.com", "b.example.com"]);
        assert_eq!(config.algorithm, Algorithm::EcdsaP384);
        assert_eq!(config.validity, Duration::from_days(90));
    }

    #[test]
    fn zero_and_outliving_validity_are_usage_errors() {
        let overlay = Overlay::default();
        let err = GenerateConfig::new(&args(&["--validity", "0d"]), &overlay).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --validity 0s: a certificate must be valid for longer than zero, such as 90d"
        );
        let err = GenerateConfig::new(&args(&["--validity", "6y"]), &overlay).unwrap_err();
        assert!(err.to_string().contains("would outlive the CA"), "{err}");
    }

    #[test]
    fn generated_secrets_use_the_chosen_names() {
        let config =
            GenerateConfig::new(&args(&["--format", "tls", "-n", "ci"]), &Overlay::default()).unwrap();
        let now = time::macros::datetime!(2026-01-01 00:00 UTC);
        let generated = build_generated(&config, now).unwrap();
        let paths: Vec<String> = generated
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "daemon/ca.crt",
                "daemon/tls.crt",
                "daemon/tls.key",
                "client/ca.crt",
                "client/tls.crt",
                "client/tls.key",
                "buildkit-daemon-certs.yaml",
                "buildkit-client-certs.yaml",
                "buildkit-ca.yaml",
            ]
        );
        let daemon: Secret = crate::yaml::from_str(
            std::str::from_utf8(&generated.files[6].contents).unwrap(),
            "daemon",
        )
        .unwrap();
        assert_eq!(daemon.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(daemon.metadata.namespace.as_deref(), Some("ci"));
        assert_eq!(generated.daemon.not_after, now + time::Duration::days(90));
        assert!(generated.daemon.sans.contains(&"buildkitd.ci.svc".to_string()));
    }

    #[test]
    fn secret_yaml_with_either_key_naming_or_string_data() {
        let path = Path::new("s.yaml");
        let tls = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: CERT\n  tls.key: KEY\n  ca.crt: CA\n";
        let sources = sources_from_yaml(path, tls).unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].name, "s.yaml");
        assert_eq!(
            sources[0].cert,
            Some(("s.yaml:tls.crt".to_string(), "CERT".to_string()))
        );
        assert_eq!(
            sources[0].bundle,
            Some(("s.yaml:ca.crt".to_string(), "CA".to_string()))
        );
        assert_eq!(sources[0].key.as_deref(), Some("KEY"));

        let two = "kind: Secret\nmetadata:\n  name: a\ndata:\n  cert.pem: Q0VSVA==\n---\nkind: Secret\nmetadata:\n  name: b\ndata:\n  ca.pem: Q0E=\n";
        let sources = sources_from_yaml(path, two).unwrap();
        assert_eq!(sources[0].name, "s.yaml:a");
        assert_eq!(
            sources[0].cert,
            Some(("s.yaml:a:cert.pem".to_string(), "CERT".to_string()))
        );
        assert_eq!(
            sources[1].bundle,
            Some(("s.yaml:b:ca.pem".to_string(), "CA".to_string()))
        );

        let other = "kind: Secret\nmetadata:\n  name: x\nstringData:\n  password: hunter2\n";
        let err = sources_from_yaml(path, other).err().unwrap().to_string();
        assert_eq!(
            err,
            "failed to read s.yaml: the Secret has none of the keys ca.pem/cert.pem/key.pem or ca.crt/tls.crt/tls.key"
        );
    }

    #[test]
    fn split_certs_keeps_each_block() {
        let text = "junk\n-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nBB==\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nCC==\n-----END CERTIFICATE-----\n";
        let parts = split_certs(text);
        assert_eq!(parts.len(), 2);
        assert!(parts[1].contains("CC=="));
        assert!(!parts.concat().contains("BB=="));
        let key = key_block(text).unwrap();
        assert_eq!(
            key,
            "-----BEGIN PRIVATE KEY-----\nBB==\n-----END PRIVATE KEY-----\n"
        );
        assert_eq!(key_block("-----BEGIN CERTIFICATE-----\n"), None);
    }
}
