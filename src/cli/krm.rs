//! `kiln krm` (the KRM function and the legacy exec plugin) and `kiln install-plugin`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::krm::{self, Diagnostic, Generated, Severity, Stack};

use super::{EXIT_FAILURE, UsageError};

/// Arguments of `kiln krm`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Modes:
  kiln krm < list.yaml          KRM function: a ResourceList (YAML or JSON) on stdin, the same list
                                on stdout with the rendered objects appended to items; errors and
                                warnings go into results (errors also exit 1)
  kiln krm stack.yaml           legacy Kustomize exec plugin: the BuildkitStack file in argv[1],
                                a YAML stream of the rendered objects on stdout

As a KRM exec function, in a file listed under `generators:` of a kustomization:
  apiVersion: kiln.dev/v1alpha1
  kind: BuildkitStack
  metadata:
    name: dev                     # the overlay name
    annotations:
      config.kubernetes.io/function: |
        exec:
          path: /usr/local/bin/kiln
          args: [krm]
  spec: {}                        # overlay fields, as in overlays/dev.yaml
then: kustomize build --enable-alpha-plugins --enable-exec DIR (kubectl kustomize skips exec
functions: use `kiln install-plugin` and the legacy plugin with it).

Leave `namespace:` out of that kustomization: an overlay with `tenants:` renders into several
namespaces, and Kustomize's namespace transformer would move every object into one.
`kiln` with no arguments and a ResourceList on stdin is the same as `kiln krm`.
`extends:` in spec names an overlay in the overlays/ directory next to the kustomization
($KUSTOMIZE_PLUGIN_CONFIG_ROOT, else the current directory).")]
pub struct KrmArgs {
    /// A BuildkitStack file: run as a legacy Kustomize exec plugin and print a YAML stream.
    /// Kustomize passes this path as the first argument; without it, read a ResourceList on stdin.
    pub config: Option<PathBuf>,
    /// Set when `kiln` ran with no arguments and data on stdin (an `exec.path` with no `args`).
    #[arg(skip)]
    pub detected: bool,
}

/// Arguments of `kiln install-plugin`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Then build with:  kubectl kustomize --enable-alpha-plugins DIR
(or kustomize build --enable-alpha-plugins DIR).")]
pub struct InstallPluginArgs {
    /// The Kustomize plugin home. Default: $KUSTOMIZE_PLUGIN_HOME, else
    /// $XDG_CONFIG_HOME/kustomize/plugin, else ~/.config/kustomize/plugin.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Copy the kiln binary instead of linking to it (for images and sandboxes where the
    /// link target is not visible).
    #[arg(long)]
    pub copy: bool,
}

/// Run `kiln krm`: the KRM function, or the legacy exec plugin when a config path is given.
pub fn krm(args: KrmArgs) -> anyhow::Result<ExitCode> {
    let root = config_root()?;
    match args.config {
        Some(path) => legacy_plugin(&path, &root),
        None => krm_function(&root, args.detected),
    }
}

/// The directory `extends:` resolves against: Kustomize sets KUSTOMIZE_PLUGIN_CONFIG_ROOT
/// to the kustomization's directory (and runs plugins there); otherwise the cwd.
fn config_root() -> anyhow::Result<PathBuf> {
    match std::env::var_os("KUSTOMIZE_PLUGIN_CONFIG_ROOT") {
        Some(root) if !root.is_empty() => Ok(PathBuf::from(root)),
        _ => std::env::current_dir().context("failed to read the current directory"),
    }
}

fn krm_function(root: &Path, detected: bool) -> anyhow::Result<ExitCode> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("failed to read the ResourceList from stdin")?;
    let text = String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!(
            "failed to read the ResourceList from stdin: it is binary data, not UTF-8 text; pass a config.kubernetes.io/v1 ResourceList in YAML or JSON"
        )
    })?;
    if detected && text.trim().is_empty() {
        return Err(UsageError("no command given and nothing on stdin: run `kiln --help`".into()).into());
    }
    let (list, format) = krm::parse_resource_list(&text, "<stdin>").map_err(|e| {
        if detected {
            UsageError(format!(
                "{e}; with no command, kiln runs as a KRM function and reads a ResourceList on stdin: run `kiln --help`"
            ))
            .into()
        } else {
            anyhow::Error::from(e)
        }
    })?;
    let outcome = krm::process(list, |stack| generate(stack, root));
    for result in &outcome.list.results {
        let field = result
            .field
            .as_ref()
            .map(|f| format!("{}: ", f.path))
            .unwrap_or_default();
        match result.severity {
            Severity::Error => eprintln!("error: {field}{}", result.message),
            Severity::Warning => eprintln!("warning: {field}{}", result.message),
            Severity::Info => {}
        }
    }
    let out = krm::write_resource_list(&outcome.list, format)?;
    write_stdout(&out)?;
    Ok(if outcome.failed {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

fn legacy_plugin(path: &Path, root: &Path) -> anyhow::Result<ExitCode> {
    let source = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("failed to read {source}"))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!("failed to read {source}: it is binary data, not a BuildkitStack in YAML")
    })?;
    let config = krm::parse_config_file(&text, &source)?;
    // Kustomize passes a temporary copy of the config: its name tells the user more.
    let label = match config.pointer("/metadata/name").and_then(|n| n.as_str()) {
        Some(name) => format!("{} {name:?} ({source})", krm::STACK_KIND),
        None => format!("{} in {source}", krm::STACK_KIND),
    };
    let (stack, warnings) = match krm::read_stack(&config) {
        Ok(read) => read,
        Err(errors) => return Err(diagnostics_error(&label, &errors)),
    };
    let generated = generate(&stack, root).map_err(|errors| diagnostics_error(&label, &errors))?;
    for warning in warnings.iter().chain(&generated.warnings) {
        eprintln!("warning: {label}: {warning}");
    }
    let objects: Vec<_> = generated.objects.iter().map(|o| &o.value).collect();
    write_stdout(&krm::yaml_stream(&objects)?)?;
    Ok(ExitCode::SUCCESS)
}

/// One error naming the config and every problem found.
fn diagnostics_error(label: &str, diagnostics: &[Diagnostic]) -> anyhow::Error {
    let problems: Vec<String> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(Diagnostic::to_string)
        .collect();
    anyhow::anyhow!("invalid {label}: {}", problems.join("; "))
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("failed to write to stdout")
}

/// Load the stack's spec as an overlay (the same path as `kiln render`) and render it.
/// `extends:` names overlays in `<root>/overlays/`, read only when the spec extends one.
fn generate(stack: &Stack, root: &Path) -> Result<Generated, Vec<Diagnostic>> {
    let dir = root.join("overlays");
    let parents = if krm::needs_parents(stack) {
        read_overlay_files(&dir)
            .map_err(|e| vec![Diagnostic::error(Some("spec.extends"), format!("{e:#}"))])?
    } else {
        BTreeMap::new()
    };
    krm::generate(stack, &dir.display().to_string(), parents)
}

/// The `*.yaml` files of an overlays directory by name (none when it does not exist).
fn read_overlay_files(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(files);
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("failed to list {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("failed to list {}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".yaml"));
        if let Some(name) = name
            && path.is_file()
        {
            let text = crate::overlay::read_overlay_file(&path)?;
            files.insert(name.to_string(), text);
        }
    }
    Ok(files)
}

/// Run `kiln install-plugin`.
pub fn install_plugin(args: InstallPluginArgs) -> anyhow::Result<ExitCode> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let kustomize_default =
        krm::default_plugin_home(var("KUSTOMIZE_PLUGIN_HOME"), var("XDG_CONFIG_HOME"), var("HOME"));
    let home = match args.dir.or_else(|| kustomize_default.clone()) {
        Some(home) => home,
        None => {
            return Err(UsageError(
                "failed to find the Kustomize plugin home: pass --dir, or set KUSTOMIZE_PLUGIN_HOME, XDG_CONFIG_HOME or HOME"
                    .into(),
            )
            .into());
        }
    };
    let target = home.join(krm::plugin_relative_path());
    let exe = std::env::current_exe()
        .and_then(|exe| exe.canonicalize())
        .context("failed to find the path of the running kiln binary")?;
    let dir = target.parent().unwrap_or(&home);
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    // Write next to the target, then rename over it: re-running replaces an old install atomically.
    let staging = dir.join(format!(".{}.kiln-install", krm::STACK_KIND));
    remove_if_present(&staging)?;
    if args.copy {
        std::fs::copy(&exe, &staging)
            .with_context(|| format!("failed to copy {} to {}", exe.display(), staging.display()))?;
        set_executable(&staging)?;
    } else {
        symlink(&exe, &staging)?;
    }
    std::fs::rename(&staging, &target)
        .with_context(|| format!("failed to move {} to {}", staging.display(), target.display()))?;
    // Kustomize only finds a plugin home other than its default through the variable.
    let hint = if kustomize_default.as_deref() == Some(home.as_path()) {
        String::new()
    } else {
        format!(" with KUSTOMIZE_PLUGIN_HOME={}", home.display())
    };
    let how = if args.copy { "a copy of" } else { "a link to" };
    eprintln!(
        "installed {} ({how} {}); build with `kubectl kustomize --enable-alpha-plugins`{hint}",
        target.display(),
        exe.display(),
    );
    println!("{}", target.display());
    Ok(ExitCode::SUCCESS)
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("failed to remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(unix)]
fn symlink(exe: &Path, link: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::symlink(exe, link)
        .with_context(|| format!("failed to link {} to {}", link.display(), exe.display()))
}

#[cfg(not(unix))]
fn symlink(_exe: &Path, _link: &Path) -> anyhow::Result<()> {
    Err(UsageError("symbolic links need a unix system: use --copy".into()).into())
}

#[cfg(unix)]
fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("failed to make {} executable", path.display()))
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// True when `kiln` ran with no arguments but has data piped on stdin: an `exec.path`
/// pointing at kiln with no `args` is then a KRM function call.
pub fn stdin_is_piped() -> bool {
    !std::io::stdin().is_terminal()
}
