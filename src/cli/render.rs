//! `kiln render`, `kiln check` and `kiln schema`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::UsageError;
use crate::output::{self, Unit};
use crate::overlay::{self, Flavor, OverlayError, Resolved, Resolver, Sources};
use crate::render;

/// The overlays directory when `--overlays` is not given.
const DEFAULT_OVERLAYS: &str = "overlays";

/// What to render: shared by `render` and `check`.
#[derive(Debug, Clone, clap::Args)]
pub struct RenderOpts {
    /// Directory of overlay files (`<name>.yaml`). When it does not exist, the embedded default
    /// overlay is rendered (only when the flag is not given).
    #[arg(long, value_name = "DIR")]
    pub overlays: Option<PathBuf>,
    /// Output directory: `<out>/<overlay>/` per overlay, plus `argocd/` or `flux/`.
    #[arg(long, value_name = "DIR", default_value = "rendered")]
    pub out: PathBuf,
    /// Render only this overlay (repeatable). Default: every overlay except base.yaml and _*.yaml;
    /// files of overlays not selected are left as they are.
    #[arg(long = "overlay", value_name = "NAME")]
    pub overlay: Vec<String>,
    /// Lay the output out for this GitOps tool, overriding each overlay's gitops.flavor.
    #[arg(long, value_enum, value_name = "FLAVOR")]
    pub gitops: Option<Flavor>,
}

/// Arguments of `kiln render`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kiln render                              every overlay in overlays/ into rendered/
  kiln render --overlay dev --gitops flux  only dev, plus rendered/flux/
  kiln render --stdout --overlay prod | kubectl apply --server-side -f -

As an Argo CD config management plugin, `kiln render --stdout` picks the overlay from
ARGOCD_ENV_OVERLAY, else the `overlay` entry of ARGOCD_APP_PARAMETERS, else ARGOCD_APP_NAME.")]
pub struct RenderArgs {
    #[command(flatten)]
    pub opts: RenderOpts,
    /// Write one YAML stream of the objects to stdout instead of files.
    #[arg(long)]
    pub stdout: bool,
}

/// Arguments of `kiln check`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kiln check                               fail (exit 1) with a diff when rendered/ is stale
  kiln check --out examples/argocd --gitops argocd")]
pub struct CheckArgs {
    #[command(flatten)]
    pub opts: RenderOpts,
}

/// Arguments of `kiln schema`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:
  kiln schema > overlay.schema.json        then point your editor's YAML schema at it")]
pub struct SchemaArgs {}

/// `kiln render`.
pub fn render(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let mut opts = args.opts;
    if args.stdout
        && opts.overlay.is_empty()
        && let Some(name) = argocd_overlay(|key| std::env::var(key).ok())?
    {
        eprintln!("kiln: rendering overlay {name} (chosen by the Argo CD plugin environment)");
        opts.overlay.push(name);
    }
    let resolved = resolve(&opts)?;
    let tenant_notes = || {
        for note in resolved.iter().filter_map(tenants_note) {
            eprintln!("kiln: {note}");
        }
    };
    if args.stdout {
        let mut text = String::new();
        for r in &resolved {
            output::stream_unit(&unit(r, opts.gitops)?, &mut text)?;
        }
        if text.is_empty() {
            return Err(output::OutputError::Empty.into());
        }
        super::print(&text)?;
        tenant_notes();
        return Ok(ExitCode::SUCCESS);
    }
    let tree = layout(&opts, &resolved)?;
    let report = output::write(&opts.out, &tree)?;
    tenant_notes();
    write_notes(&opts.out, &tree, &report);
    let names: Vec<&str> = resolved.iter().map(|r| r.name.as_str()).collect();
    let names = match names.as_slice() {
        [first, .., last] if names.len() > 5 => format!("{} overlays ({first} … {last})", names.len()),
        _ => names.join(", "),
    };
    eprintln!(
        "kiln: rendered {names} into {}: {} files changed, {} removed, {} other files left alone",
        opts.out.display(),
        report.changed.len(),
        report.removed.len(),
        report.kept,
    );
    Ok(ExitCode::SUCCESS)
}

/// `kiln check`.
pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let opts = args.opts;
    let resolved = resolve(&opts)?;
    let tree = layout(&opts, &resolved)?;
    let drift = output::check(&opts.out, &tree)?;
    if drift.is_empty() {
        eprintln!("kiln: {} is up to date", opts.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = String::new();
    for d in &drift {
        let _ = write!(text, "{d}");
    }
    super::print_report(&text)?;
    for flavor in ["argocd", "flux"] {
        let prefix = format!("{flavor}/");
        let stale = drift
            .iter()
            .any(|d| matches!(d, output::Drift::Stale { path } if path.starts_with(&prefix)));
        if stale && !tree.files.keys().any(|p| p.as_str().starts_with(&prefix)) {
            eprintln!(
                "kiln: hint: {} holds {prefix} files: was it rendered with --gitops {flavor}? Set \
                 gitops.flavor: {flavor} in the overlays so that render and check agree without the flag",
                opts.out.display()
            );
        }
    }
    eprintln!(
        "error: {} is stale or hand-edited ({} differences): run `kiln render` with the same flags and commit the result",
        opts.out.display(),
        drift.len()
    );
    Ok(ExitCode::from(crate::cli::EXIT_FAILURE))
}

/// `kiln schema`.
pub fn schema(_args: SchemaArgs) -> anyhow::Result<ExitCode> {
    let text = serde_json::to_string_pretty(&overlay::schema()).context("failed to serialize the schema")?;
    super::print(&format!("{text}\n"))?;
    Ok(ExitCode::SUCCESS)
}

/// A reminder for an overlay with tenants: kiln renders into their namespaces but does not
/// create them.
fn tenants_note(r: &Resolved) -> Option<String> {
    let tenants: Vec<&str> = r.overlay.tenants.iter().map(|t| t.namespace.as_str()).collect();
    let (list, it, them) = match tenants.as_slice() {
        [] => return None,
        [one] => (format!("namespace {one}"), "it", "it"),
        [first, .., last] if tenants.len() > 5 => (
            format!("{} namespaces ({first} … {last})", tenants.len()),
            "they",
            "them",
        ),
        _ => (format!("namespaces {}", tenants.join(", ")), "they", "them"),
    };
    Some(format!(
        "overlay {} renders into tenant {list}, which kiln does not create: {it} must exist before the sync \
         (Argo CD: the project's destinations must allow {them})",
        r.name
    ))
}

/// The lines a write owes its user: what it recovered, kept, upgraded, or replaced.
fn write_notes(out: &Path, tree: &output::Tree, report: &output::WriteReport) {
    let out = out.display();
    if let Some(old) = &report.restored {
        eprintln!(
            "kiln: note: restored {out} from {} (an earlier render was interrupted)",
            old.display()
        );
    }
    if report.upgraded_manifest {
        eprintln!(
            "kiln: note: rewrote {out}/{} with a hash per file (its first format listed paths only; \
             it was read once and replaced)",
            output::MANIFEST
        );
    }
    for path in &report.edited {
        eprintln!(
            "kiln: warning: kept {out}/{path}: kiln wrote it and no longer renders it, but it was \
             edited since; delete it yourself if you do not need it"
        );
    }
    for (path, what) in &report.special {
        eprintln!("kiln: warning: kept {out}/{path}: it is {what}, which kiln never opens");
    }
    for flavor in ["argocd", "flux"] {
        let prefix = format!("{flavor}/");
        let removed: Vec<&String> = report.removed.iter().filter(|p| p.starts_with(&prefix)).collect();
        let Some(first) = removed.first() else {
            continue;
        };
        if tree.files.keys().any(|p| p.as_str().starts_with(&prefix)) {
            continue;
        }
        let more = match removed.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        eprintln!(
            "kiln: note: removed {out}/{first}{more}: one GitOps layout replaces another (the {flavor} \
             layout is not rendered now); set gitops.flavor in the overlays so that `kiln render` and \
             `kiln check` keep one layout without --gitops"
        );
    }
}

/// Resolve the selected overlays (or all of them).
fn resolve(opts: &RenderOpts) -> anyhow::Result<Vec<Resolved>> {
    let dir = opts
        .overlays
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_OVERLAYS));
    if opts.overlays.is_some() && !dir.is_dir() {
        return Err(UsageError(format!(
            "--overlays {}: no such directory (leave the flag out to use the embedded default overlay)",
            dir.display()
        ))
        .into());
    }
    let sources = Sources::read(&dir)?;
    for path in sources.ignored() {
        eprintln!("kiln: warning: ignoring {path}: overlay files end in .yaml");
    }
    let usage = |err: OverlayError| -> anyhow::Error {
        match err {
            OverlayError::NotFound { .. } | OverlayError::Name { .. } => {
                UsageError(format!("--overlay: {err}")).into()
            }
            other => other.into(),
        }
    };
    if opts.overlay.is_empty() {
        return overlay::resolve_all(&sources).map_err(anyhow::Error::from);
    }
    let resolver = Resolver::new(&sources);
    let names: BTreeSet<&String> = opts.overlay.iter().collect();
    names
        .into_iter()
        .map(|name| resolver.resolve(name).map_err(usage))
        .collect()
}

/// Render one resolved overlay: render's objects, then the extras.
fn unit(r: &Resolved, gitops: Option<Flavor>) -> anyhow::Result<Unit<'_>> {
    let objects = render::render_resolved(r)
        .with_context(|| format!("failed to render overlay {} ({})", r.name, r.source))?;
    Ok(Unit {
        resolved: r,
        objects,
        flavor: gitops.unwrap_or(r.overlay.gitops.flavor),
    })
}

/// Render and lay out the overlays one at a time (objects are dropped once they are text).
fn layout(opts: &RenderOpts, resolved: &[Resolved]) -> anyhow::Result<output::Tree> {
    let mut layout = output::Layout::new(&repo_path(&opts.out));
    for r in resolved {
        layout.add(&unit(r, opts.gitops)?)?;
    }
    let scope = (!opts.overlay.is_empty()).then(|| opts.overlay.iter().cloned().collect());
    Ok(layout.finish(scope)?)
}

/// The output directory as a path inside the repository, for Argo CD and Flux: the relative
/// path as given (kiln runs from the repository root), or the last component of an absolute one.
fn repo_path(out: &Path) -> String {
    if out.is_absolute() {
        return out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    out.components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The overlay an Argo CD config management plugin asks for, from its environment:
/// `ARGOCD_ENV_OVERLAY`, else the `overlay` entry of `ARGOCD_APP_PARAMETERS`, else
/// `ARGOCD_APP_NAME` (without a `buildkit-` prefix).
fn argocd_overlay(env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<String>> {
    if let Some(name) = env("ARGOCD_ENV_OVERLAY").filter(|s| !s.is_empty()) {
        return Ok(Some(name));
    }
    if let Some(params) = env("ARGOCD_APP_PARAMETERS").filter(|s| !s.trim().is_empty()) {
        #[derive(serde::Deserialize)]
        struct Param {
            name: String,
            #[serde(default)]
            string: Option<String>,
        }
        let params: Vec<Param> = serde_json::from_str(&params).map_err(|e| {
            UsageError(format!(
                "failed to parse ARGOCD_APP_PARAMETERS: {e}; expected a JSON array of {{\"name\": …, \"string\": …}}"
            ))
        })?;
        if let Some(name) = params
            .into_iter()
            .find(|p| p.name == "overlay")
            .and_then(|p| p.string)
        {
            return Ok(Some(name));
        }
    }
    Ok(env("ARGOCD_APP_NAME")
        .filter(|s| !s.is_empty())
        .map(|name| name.strip_prefix("buildkit-").map(str::to_string).unwrap_or(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| vars.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
    }

    #[test]
    fn argocd_overlay_precedence() {
        let params = r#"[{"name":"overlay","string":"prod"}]"#;
        let all = [
            ("ARGOCD_ENV_OVERLAY", "dev"),
            ("ARGOCD_APP_PARAMETERS", params),
            ("ARGOCD_APP_NAME", "x"),
        ];
        assert_eq!(argocd_overlay(env(&all)).unwrap().as_deref(), Some("dev"));
        assert_eq!(argocd_overlay(env(&all[1..])).unwrap().as_deref(), Some("prod"));
        assert_eq!(
            argocd_overlay(env(&[("ARGOCD_APP_NAME", "buildkit-staging")]))
                .unwrap()
                .as_deref(),
            Some("staging")
        );
        assert_eq!(argocd_overlay(env(&[])).unwrap(), None);
        assert!(argocd_overlay(env(&[("ARGOCD_APP_PARAMETERS", "{")])).is_err());
    }

    #[test]
    fn repo_paths() {
        assert_eq!(repo_path(Path::new("rendered")), "rendered");
        assert_eq!(repo_path(Path::new("./examples/argocd/")), "examples/argocd");
        assert_eq!(repo_path(Path::new("/tmp/x/out")), "out");
    }
}
