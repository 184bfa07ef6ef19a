//! Value checks that types alone cannot express: names, quantities, schedules, lifetimes.
//! Pure: each check returns the dotted field path and what is wrong.

use super::Overlay;
use crate::names::{is_dns1123_label, is_dns1123_subdomain, is_label_key, is_label_value};

/// One invalid value: the dotted field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted field path, such as `buildkit.serviceName`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// True for a Kubernetes quantity such as `500m`, `2Gi`, `1.5`, `1e3`.
fn is_quantity(s: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let number = number.strip_prefix(['+', '-']).unwrap_or(number);
    let digits_ok = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|b| *b == b'.').count() <= 1
        && number.bytes().any(|b| b.is_ascii_digit());
    let exponent_ok = suffix.strip_prefix(['e', 'E']).is_some_and(|e| {
        !e.is_empty()
            && e.trim_start_matches(['+', '-'])
                .bytes()
                .all(|b| b.is_ascii_digit())
    });
    digits_ok && (SUFFIXES.contains(&suffix) || exponent_ok)
}

/// True for a cron schedule of five fields (or a `@daily`-style macro).
fn is_cron_schedule(s: &str) -> bool {
    const MACROS: &[&str] = &[
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    if MACROS.contains(&s.trim()) {
        return true;
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            f.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"*/,-?".contains(&b))
        })
}

/// True for an image reference: no whitespace, not empty, no uppercase in the repository.
fn is_image(s: &str) -> bool {
    !s.is_empty() && !s.contains(char::is_whitespace)
}

/// True when the last path component of an image reference carries a `:tag` (a `:` before
/// the last `/` is a registry port).
fn has_tag(image: &str) -> bool {
    image.rsplit('/').next().is_some_and(|last| last.contains(':'))
}

/// True for an image digest as registries print it: `sha256:` and 64 lowercase hex digits.
fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// An optional digest field: empty, or a valid digest.
fn digest(out: &mut Vec<Invalid>, field: &str, value: &str) {
    if !value.is_empty() && !is_digest(value) {
        out.push(invalid(
            field,
            format!(
                "{:?} is not an image digest: write sha256: and 64 lowercase hex digits, the Digest line of \
                 docker buildx imagetools inspect <image>:<tag>",
                clip(value)
            ),
        ));
    }
}

/// A list of imagePullSecrets: Secret names, each once.
fn pull_secrets(out: &mut Vec<Invalid>, field: &str, names: &[String]) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let field = format!("{field}[{i}]");
        if !is_dns1123_subdomain(name) {
            out.push(invalid(
                field,
                format!(
                    "{:?} is not a Secret name: use lowercase letters, digits, '-' and '.', starting and ending \
                     with a letter or digit",
                    clip(name)
                ),
            ));
        } else if !seen.insert(name.as_str()) {
            out.push(invalid(
                field,
                format!("{name:?} is listed twice; list each Secret once"),
            ));
        }
    }
}

/// Check every value of a resolved overlay. Returns all problems, in field order.
pub fn validate(o: &Overlay) -> Vec<Invalid> {
    let mut out = Vec::new();
    let label = |out: &mut Vec<Invalid>, field: &str, value: &str| {
        if !is_dns1123_label(value) {
            out.push(invalid(
                field,
                format!(
                    "{value:?} is not a valid DNS-1123 label: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
                ),
            ));
        }
    };
    let subdomain = |out: &mut Vec<Invalid>, field: &str, value: &str| {
        if !is_dns1123_subdomain(value) {
            out.push(invalid(
                field,
                format!(
                    "{value:?} is not a valid DNS-1123 name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
                ),
            ));
        }
    };
    label(&mut out, "namespace", &o.namespace);
    let mut seen = std::collections::BTreeSet::new();
    for (i, tenant) in o.tenants.iter().enumerate() {
        let field = format!("tenants[{i}].namespace");
        label(&mut out, &field, &tenant.namespace);
        if tenant.namespace == o.namespace {
            out.push(invalid(
                field,
                format!(
                    "{:?} is the farm's own namespace, which is always a tenant; remove this entry",
                    tenant.namespace
                ),
            ));
        } else if !seen.insert(tenant.namespace.as_str()) {
            out.push(invalid(
                field,
                format!(
                    "{:?} is listed twice; list each tenant namespace once",
                    tenant.namespace
                ),
            ));
        }
    }
    for (key, value) in &o.common_labels {
        if !is_label_key(key) {
            out.push(invalid(
                format!("commonLabels.{key}"),
                format!("{key:?} is not a valid label key"),
            ));
        }
        if !is_label_value(value) {
            out.push(invalid(
                format!("commonLabels.{key}"),
                format!("{value:?} is not a valid label value: at most 63 letters, digits, '-', '_' or '.'"),
            ));
        }
    }

    let b = &o.buildkit;
    // The version is an image tag and the daemon's app.kubernetes.io/version label: a label
    // value is the stricter of the two.
    if b.version.is_empty() || !is_label_value(&b.version) {
        out.push(invalid(
            "buildkit.version",
            "must be a BuildKit release tag, such as v0.32.2",
        ));
    }
    if !is_image(&b.image) {
        out.push(invalid(
            "buildkit.image",
            "must be an image repository, such as docker.io/moby/buildkit",
        ));
    } else if b.image.contains('@') {
        out.push(invalid(
            "buildkit.image",
            format!(
                "{:?} carries a digest: write the repository only, and the digest in buildkit.digest",
                clip(&b.image)
            ),
        ));
    } else if has_tag(&b.image) {
        out.push(invalid(
            "buildkit.image",
            format!(
                "{:?} carries a tag: write the repository only (such as docker.io/moby/buildkit); the tag comes \
                 from buildkit.version",
                clip(&b.image)
            ),
        ));
    }
    digest(&mut out, "buildkit.digest", &b.digest);
    pull_secrets(&mut out, "buildkit.imagePullSecrets", &b.image_pull_secrets);
    label(&mut out, "buildkit.serviceName", &b.service_name);
    if b.service_name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push(invalid(
            "buildkit.serviceName",
            "a Service name must start with a letter",
        ));
    }
    if b.replicas > super::MAX_REPLICAS {
        out.push(invalid(
            "buildkit.replicas",
            format!(
                "must be at most {}, got {}: kiln build spreads builds over at most that many daemons",
                super::MAX_REPLICAS,
                b.replicas
            ),
        ));
    }
    if b.port == 0 {
        out.push(invalid("buildkit.port", "must be a TCP port from 1 to 65535"));
    }
    resources(&mut out, "buildkit.resources", &b.resources);
    for (key, value) in &b.node_selector {
        if !is_label_key(key) || !is_label_value(value) {
            out.push(invalid(
                format!("buildkit.nodeSelector.{key}"),
                format!("{key}={value} is not a valid node label"),
            ));
        }
    }
    for (i, t) in b.tolerations.iter().enumerate() {
        if let Some(op) = &t.operator
            && op != "Exists"
            && op != "Equal"
        {
            out.push(invalid(
                format!("buildkit.tolerations[{i}].operator"),
                format!("{op:?} must be Exists or Equal"),
            ));
        }
        if let Some(effect) = &t.effect
            && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect.as_str())
        {
            out.push(invalid(
                format!("buildkit.tolerations[{i}].effect"),
                format!("{effect:?} must be NoSchedule, PreferNoSchedule or NoExecute"),
            ));
        }
    }
    buildkit_cache(&mut out, b);
    buildkit_config(&mut out, &b.config);
    buildkit_extra_args(&mut out, &b.extra_args);

    let t = &o.tekton;
    subdomain(&mut out, "tekton.name", &t.name);
    digest(&mut out, "tekton.daemonlessDigest", &t.daemonless_digest);
    // In rootless mode the daemon and the daemonless Task run one image, so two different
    // digests mean one of them belongs to another tag (a mode changed under an `extends:`).
    if b.mode == super::Mode::Rootless
        && is_digest(&b.digest)
        && is_digest(&t.daemonless_digest)
        && b.digest != t.daemonless_digest
    {
        out.push(invalid(
            "tekton.daemonlessDigest",
            format!(
                "differs from buildkit.digest, but in rootless mode the daemon and the daemonless Task both run \
                 {}:{}-rootless: one of them is the digest of another tag; keep the one of that tag (or remove \
                 tekton.daemonlessDigest)",
                clip(&b.image),
                b.version
            ),
        ));
    }
    if t.timeout.is_zero() {
        out.push(invalid("tekton.timeout", "must be longer than 0s, such as 1h"));
    }
    resources(&mut out, "tekton.stepResources", &t.step_resources);

    let c = &o.certs;
    if c.ca_validity.is_zero() {
        out.push(invalid("certs.caValidity", "must be longer than 0s, such as 5y"));
    }
    if c.validity.is_zero() {
        out.push(invalid("certs.validity", "must be longer than 0s, such as 90d"));
    } else if c.validity >= c.ca_validity {
        out.push(invalid(
            "certs.validity",
            format!(
                "the leaf validity {} must be shorter than certs.caValidity {}",
                c.validity, c.ca_validity
            ),
        ));
    }
    if let Some(renew) = c.renew_before
        && (renew.is_zero() || renew >= c.validity)
    {
        out.push(invalid(
            "certs.renewBefore",
            format!(
                "{renew} must be longer than 0s and shorter than certs.validity {}",
                c.validity
            ),
        ));
    }
    for (i, san) in c.extra_sans.iter().enumerate() {
        let dns = san.strip_prefix("*.").unwrap_or(san);
        if san.parse::<std::net::IpAddr>().is_err() && !is_dns1123_subdomain(dns) {
            out.push(invalid(
                format!("certs.extraSans[{i}]"),
                format!("{san:?} is neither an IP address nor a lowercase DNS name"),
            ));
        }
    }
    subdomain(&mut out, "certs.secrets.ca", &c.secrets.ca);
    subdomain(&mut out, "certs.secrets.daemon", &c.secrets.daemon);
    subdomain(&mut out, "certs.secrets.client", &c.secrets.client);
    let names = [&c.secrets.ca, &c.secrets.daemon, &c.secrets.client];
    if names[0] == names[1] || names[1] == names[2] || names[0] == names[2] {
        out.push(invalid(
            "certs.secrets",
            "the ca, daemon and client Secrets need three different names",
        ));
    }

    let r = &o.rotation;
    if !is_cron_schedule(&r.schedule) {
        out.push(invalid(
            "rotation.schedule",
            format!(
                "{:?} is not a cron schedule: write five fields (minute hour day month weekday), such as \"17 3 * * *\", or @daily",
                r.schedule
            ),
        ));
    }
    if r.time_zone.is_empty()
        || !r
            .time_zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
    {
        out.push(invalid(
            "rotation.timeZone",
            format!("{:?} is not an IANA time zone name, such as Etc/UTC", r.time_zone),
        ));
    }
    resources(&mut out, "rotation.resources", &r.resources);

    let k = &o.kiln;
    if !is_image(&k.image) {
        out.push(invalid(
            "kiln.image",
            "must be an image reference, such as ghcr.io/kiln-dev/kiln:0.1.0",
        ));
    } else if k.image.contains('@') && !k.digest.is_empty() {
        out.push(invalid(
            "kiln.digest",
            format!(
                "kiln.image {:?} carries a digest already; keep one of the two",
                clip(&k.image)
            ),
        ));
    }
    digest(&mut out, "kiln.digest", &k.digest);
    pull_secrets(&mut out, "kiln.imagePullSecrets", &k.image_pull_secrets);

    let g = &o.gitops;
    if g.repo_url.is_empty() || g.repo_url.contains(char::is_whitespace) {
        out.push(invalid(
            "gitops.repoURL",
            "must be the URL of the git repository the GitOps tool reads",
        ));
    }
    if g.revision.is_empty() {
        out.push(invalid(
            "gitops.revision",
            "must be a branch, tag or commit, such as main",
        ));
    }
    if g.path.starts_with('/') || g.path.split('/').any(|p| p == "..") {
        out.push(invalid(
            "gitops.path",
            "must be a relative path inside the repository, such as rendered",
        ));
    }
    subdomain(&mut out, "gitops.project", &g.project);
    for (i, name) in g.depends_on.iter().enumerate() {
        subdomain(&mut out, &format!("gitops.dependsOn[{i}]"), name);
    }
    if !g.controller_namespace.is_empty() {
        label(&mut out, "gitops.controllerNamespace", &g.controller_namespace);
    }
    out.extend(rotation_timing(o));
    out
}

/// A span as `1d1h5m`: the largest units first, the form an overlay accepts.
fn span(secs: i64) -> String {
    if secs <= 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

/// `secs` rounded up to a whole multiple of `unit` seconds.
fn round_up(secs: i64, unit: i64) -> i64 {
    secs.saturating_add(unit - 1) / unit * unit
}

/// Rotation timing that cannot work (issue 10, point 8), as errors naming the fields and a
/// value that would work:
/// - a CA rollover takes three steps, each after `rotation.propagationDelay`, and each lands
///   on a CronJob run: the CA's renew window (the last third of `certs.caValidity`) must be
///   at least 3 × the delay plus one CronJob period, or the CA expires mid-rollover (an
///   outage every CA lifetime);
/// - a leaf renewal must be written and rolled out before the leaf expires: the leaf renew
///   window must be at least one CronJob period plus the time a rolling restart of every
///   replica can take ([`super::Overlay::worst_case_restart`]).
///
/// One CronJob period is the longest gap between two firings of `rotation.schedule`
/// ([`crate::schedule`]). A schedule that cannot be read is reported here only when the
/// shape check above accepted it (so one field gets one error).
pub fn rotation_timing(o: &Overlay) -> Vec<Invalid> {
    let mut out = Vec::new();
    let r = &o.rotation;
    let c = &o.certs;
    let period = match crate::schedule::Schedule::parse(&r.schedule).and_then(|s| s.longest_gap()) {
        Ok(period) => period.as_secs(),
        Err(e) => {
            if is_cron_schedule(&r.schedule) {
                out.push(invalid("rotation.schedule", format!("{:?}: {e}", r.schedule)));
            }
            return out;
        }
    };
    if c.ca_validity.is_zero() || c.validity.is_zero() {
        return out;
    }
    let delay = r.propagation_delay.as_secs();
    let ca_window = c.ca_renew_before().as_secs();
    let ca_need = delay.saturating_mul(3).saturating_add(period);
    if ca_window < ca_need {
        let day = 86_400;
        let validity_needed = round_up(ca_need.saturating_mul(3), day);
        let delay_fits = (ca_window - period) / 3;
        let shorter_delay = if delay_fits >= 60 {
            format!(
                ", or a rotation.propagationDelay of at most {}",
                span(delay_fits / 60 * 60)
            )
        } else {
            String::new()
        };
        out.push(invalid(
            "certs.caValidity",
            format!(
                "its renew window (a third: {}) is shorter than a CA rollover needs: 3 × rotation.propagationDelay {} \
                 plus one rotation.schedule period {} = {}; the CA would expire mid-rollover; use certs.caValidity: {} \
                 or more{shorter_delay}",
                span(ca_window),
                span(delay),
                span(period),
                span(ca_need),
                span(validity_needed),
            ),
        ));
    }
    let restart = o.worst_case_restart().as_secs();
    let leaf_window = c.leaf_renew_before().as_secs();
    let leaf_need = period.saturating_add(restart);
    if leaf_window < leaf_need {
        let why = format!(
            "one rotation.schedule period {} plus the restart time {} (tekton.timeout plus a {} drain margin, per replica, \
             × buildkit.replicas {})",
            span(period),
            span(restart),
            span(super::DRAIN_MARGIN.as_secs()),
            o.buildkit.replicas.max(1)
        );
        let hour = 3_600;
        let renew_needed = round_up(leaf_need, hour);
        let (field, fix) = match c.renew_before {
            Some(renew) => (
                "certs.renewBefore",
                format!(
                    "{renew} is shorter than {why} = {}; use certs.renewBefore: {} or more{}",
                    span(leaf_need),
                    span(renew_needed),
                    if renew_needed >= c.validity.as_secs() {
                        format!(" with a certs.validity longer than that (now {})", c.validity)
                    } else {
                        String::new()
                    }
                ),
            ),
            None => (
                "certs.validity",
                format!(
                    "its renew window (a third: {}) is shorter than {why} = {}; use certs.validity: {} or more, \
                     or set certs.renewBefore: {}",
                    span(leaf_window),
                    span(leaf_need),
                    span(round_up(leaf_need.saturating_mul(3), 86_400)),
                    span(renew_needed),
                ),
            ),
        };
        out.push(invalid(field, fix));
    }
    out
}

/// The smallest cache kiln accepts: base images and buildkitd's own state need room.
const MIN_CACHE_BYTES: u64 = 1 << 30;

/// `buildkit.cache`: a size buildkitd's GC can be derived from, and a volume each replica owns.
fn buildkit_cache(out: &mut Vec<Invalid>, b: &super::Buildkit) {
    use super::{CacheVolume, Workload};
    let cache = &b.cache;
    let persistent = cache.volume == CacheVolume::Persistent;
    if cache.size.is_empty() {
        if persistent {
            out.push(invalid(
                "buildkit.cache.size",
                "a persistent cache needs a size (the PVC request), such as 100Gi",
            ));
        }
    } else {
        match cache.size_bytes() {
            None => out.push(invalid(
                "buildkit.cache.size",
                format!(
                    "{:?} is not a size in bytes, such as 50Gi or 200G",
                    clip(&cache.size)
                ),
            )),
            Some(bytes) if bytes < MIN_CACHE_BYTES => out.push(invalid(
                "buildkit.cache.size",
                format!(
                    "{} is too small: use at least 1Gi (base images and buildkitd's own state need room)",
                    cache.size
                ),
            )),
            Some(_) => {}
        }
    }
    if !cache.storage_class.is_empty() {
        if !persistent {
            out.push(invalid(
                "buildkit.cache.storageClass",
                "applies to a persistent cache only: set buildkit.cache.volume: persistent, or remove it",
            ));
        } else if !is_dns1123_subdomain(&cache.storage_class) {
            out.push(invalid(
                "buildkit.cache.storageClass",
                format!(
                    "{:?} is not a StorageClass name: use lowercase letters, digits, '-' and '.'",
                    clip(&cache.storage_class)
                ),
            ));
        }
    }
    if persistent && b.workload == Workload::Deployment && b.replicas > 1 {
        out.push(invalid(
            "buildkit.cache.volume",
            format!(
                "a persistent cache with a Deployment of {} replicas would put every daemon on one volume; \
                 set buildkit.workload: statefulset (one PVC per replica), or buildkit.replicas: 1",
                b.replicas
            ),
        ));
    }
}

/// `buildkit.config`: registry hosts and mirrors buildkitd can use as written.
fn buildkit_config(out: &mut Vec<Invalid>, config: &super::BuildkitdConfig) {
    let host_like = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace) && !s.contains("://");
    for (host, registry) in &config.registry {
        let field = format!("buildkit.config.registry.{host}");
        if !host_like(host) || host.contains('/') {
            out.push(invalid(
                &field,
                format!(
                    "{:?} is not a registry host: write the host (and port) only, such as docker.io or registry.example.com:5000",
                    clip(host)
                ),
            ));
        }
        for (i, mirror) in registry.mirrors.iter().enumerate() {
            if !host_like(mirror) {
                out.push(invalid(
                    format!("{field}.mirrors[{i}]"),
                    format!(
                        "{:?} is not a mirror: write a host or host/path without a scheme, such as mirror.gcr.io \
                         (set http: true for plain HTTP)",
                        clip(mirror)
                    ),
                ));
            }
        }
        if registry.http == Some(true) && registry.insecure == Some(true) {
            out.push(invalid(
                format!("{field}.insecure"),
                "do not combine http: true (plain HTTP) with insecure: true (unverified HTTPS); keep one",
            ));
        }
    }
}

/// `buildkit.extraArgs` must not fight the flags and files kiln renders.
fn buildkit_extra_args(out: &mut Vec<Invalid>, args: &[String]) {
    for (i, arg) in args.iter().enumerate() {
        let flag = arg.split('=').next().unwrap_or(arg);
        let why = match flag {
            "--config" => {
                "kiln passes --config for the rendered buildkitd.toml; put settings in buildkit.config"
            }
            "--root" => "kiln mounts the cache volume at buildkitd's default root; remove this flag",
            f if f.starts_with("--oci-worker-gc") => {
                "kiln sizes garbage collection from buildkit.cache.size in buildkitd.toml; remove this flag"
            }
            _ => continue,
        };
        out.push(invalid(
            format!("buildkit.extraArgs[{i}]"),
            format!("{flag}: {why}"),
        ));
    }
}

/// A user value cut to 80 characters for an error message.
fn clip(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(80).collect::<String>())
    }
}

fn resources(out: &mut Vec<Invalid>, field: &str, r: &super::Resources) {
    for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (name, value) in map {
            if !is_quantity(value) {
                out.push(invalid(
                    format!("{field}.{kind}.{name}"),
                    format!("{value:?} is not a Kubernetes quantity, such as 500m or 2Gi"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for good in ["500m", "2Gi", "1", "1.5", "1e3", "100M"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "2 Gi", "Gi", "1.2.3", "12x", "abc"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn schedules() {
        assert!(is_cron_schedule("17 3 * * *"));
        assert!(is_cron_schedule("@daily"));
        assert!(is_cron_schedule("*/15 0-6 1,15 JAN MON-FRI"));
        assert!(!is_cron_schedule("every day"));
        assert!(!is_cron_schedule("* * * *"));
    }

    #[test]
    fn default_overlay_is_valid() {
        assert_eq!(validate(&Overlay::default()), vec![]);
    }

    fn fields(o: &Overlay) -> Vec<String> {
        validate(o).into_iter().map(|i| i.field).collect()
    }

    const DIGEST: &str = "sha256:28a898719c18a33f4e8000685287fa36fd0dd9560c6440227d3a732d79bb41d8";

    #[test]
    fn digests_are_sha256_and_64_lowercase_hex_digits() {
        assert!(is_digest(DIGEST));
        for bad in [
            "28a898719c18a33f4e8000685287fa36fd0dd9560c6440227d3a732d79bb41d8",
            "sha256:28A898719C18A33F4E8000685287FA36FD0DD9560C6440227D3A732D79BB41D8",
            "sha256:28a898719c18a33f",
            "sha512:28a898719c18a33f4e8000685287fa36fd0dd9560c6440227d3a732d79bb41d8",
            "sha256:28a898719c18a33f4e8000685287fa36fd0dd9560c6440227d3a732d79bb41d8 ",
            "@sha256:28a898719c18a33f4e8000685287fa36fd0dd9560c6440227d3a732d79bb41d8",
        ] {
            assert!(!is_digest(bad), "{bad}");
        }
        let mut o = Overlay::default();
        o.buildkit.digest = "sha256:abc".into();
        o.tekton.daemonless_digest = "latest".into();
        o.kiln.digest = DIGEST.to_uppercase();
        assert_eq!(
            fields(&o),
            ["buildkit.digest", "tekton.daemonlessDigest", "kiln.digest"]
        );
        let message = &validate(&o)[0].message;
        assert!(
            message.contains("sha256: and 64 lowercase hex digits"),
            "{message}"
        );
        assert!(message.contains("docker buildx imagetools inspect"), "{message}");

        o.buildkit.digest = DIGEST.into();
        o.tekton.daemonless_digest = String::new();
        o.kiln.digest = DIGEST.into();
        assert_eq!(fields(&o), Vec::<String>::new());
    }

    #[test]
    fn the_buildkit_image_is_a_repository_and_the_version_a_tag() {
        let mut o = Overlay::default();
        for good in ["registry.example.com:5000/mirror/moby/buildkit", "moby/buildkit"] {
            o.buildkit.image = good.into();
            assert_eq!(fields(&o), Vec::<String>::new(), "{good}");
        }
        o.buildkit.image = "moby/buildkit:v0.32.2".into();
        let invalid = validate(&o);
        assert_eq!(invalid[0].field, "buildkit.image");
        assert!(
            invalid[0].message.contains("the tag comes from buildkit.version"),
            "{invalid:?}"
        );
        o.buildkit.image = format!("moby/buildkit@{DIGEST}");
        let invalid = validate(&o);
        assert!(
            invalid[0].message.contains("the digest in buildkit.digest"),
            "{invalid:?}"
        );

        let mut o = Overlay::default();
        for bad in ["v0.32.2+build", "-v1", "v1@sha256"] {
            o.buildkit.version = bad.into();
            assert_eq!(fields(&o), ["buildkit.version"], "{bad}");
        }
    }

    #[test]
    fn a_kiln_image_with_a_digest_takes_no_second_one() {
        let mut o = Overlay::default();
        o.kiln.image = format!("ghcr.io/kiln-dev/kiln:0.1.0@{DIGEST}");
        assert_eq!(fields(&o), Vec::<String>::new());
        o.kiln.digest = DIGEST.into();
        assert_eq!(fields(&o), ["kiln.digest"]);
    }

    #[test]
    fn in_rootless_mode_one_image_has_one_digest() {
        let other = "sha256:504731e577c20559c00f968f33219f30115e70be29ab96728d1d06e963fc494b";
        let mut o = Overlay::default();
        o.buildkit.digest = DIGEST.into();
        o.tekton.daemonless_digest = DIGEST.into();
        assert_eq!(fields(&o), Vec::<String>::new());
        // A base overlay that pinned a privileged daemon, extended by a rootless one.
        o.tekton.daemonless_digest = other.into();
        let invalid = validate(&o);
        assert_eq!(invalid.len(), 1);
        assert_eq!(invalid[0].field, "tekton.daemonlessDigest");
        assert!(
            invalid[0]
                .message
                .contains("docker.io/moby/buildkit:v0.32.2-rootless"),
            "{}",
            invalid[0].message
        );
        // Privileged: the daemon runs v0.32.2, the daemonless Task v0.32.2-rootless.
        o.buildkit.mode = crate::overlay::Mode::Privileged;
        assert_eq!(fields(&o), Vec::<String>::new());
    }

    #[test]
    fn pull_secrets_are_secret_names_listed_once() {
        let mut o = Overlay::default();
        o.kiln.image_pull_secrets = vec!["ghcr".into(), "Bad_Name".into(), "ghcr".into()];
        o.buildkit.image_pull_secrets = vec!["mirror.pull".into(), String::new()];
        let invalid = validate(&o);
        let fields: Vec<_> = invalid.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "buildkit.imagePullSecrets[1]",
                "kiln.imagePullSecrets[1]",
                "kiln.imagePullSecrets[2]"
            ]
        );
        assert!(
            invalid[1].message.contains("\"Bad_Name\" is not a Secret name"),
            "{invalid:?}"
        );
        assert!(invalid[2].message.contains("listed twice"), "{invalid:?}");
    }

    #[test]
    fn lifetimes_must_nest() {
        let mut o = Overlay::default();
        o.certs.validity = o.certs.ca_validity;
        o.certs.renew_before = Some(crate::duration::Duration::from_days(400 * 5));
        let fields: Vec<_> = validate(&o).into_iter().map(|i| i.field).collect();
        assert_eq!(fields, ["certs.validity", "certs.renewBefore"]);
    }

    #[test]
    fn a_ca_renew_window_too_short_for_a_rollover_is_refused() {
        let mut o = Overlay::default();
        o.certs.ca_validity = "3d".parse().unwrap();
        o.certs.validity = "1d".parse().unwrap();
        o.certs.renew_before = Some("12h".parse().unwrap());
        o.rotation.schedule = "0 * * * *".into();
        o.tekton.timeout = "10m".parse().unwrap();
        o.rotation.propagation_delay = "2d".parse().unwrap();
        let errors = rotation_timing(&o);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "certs.caValidity");
        let message = &errors[0].message;
        assert!(
            message.contains("3 × rotation.propagationDelay 2d plus one rotation.schedule period 1h = 6d1h"),
            "{message}"
        );
        assert!(message.contains("use certs.caValidity: 19d or more"), "{message}");
        // The value it suggests works.
        o.certs.ca_validity = "19d".parse().unwrap();
        assert_eq!(rotation_timing(&o), vec![]);
        // So does the shorter delay it suggests.
        o.certs.ca_validity = "3d".parse().unwrap();
        o.rotation.propagation_delay = "7h".parse().unwrap();
        assert_eq!(rotation_timing(&o), vec![]);
        o.rotation.propagation_delay = "8h".parse().unwrap();
        assert!(
            rotation_timing(&o)[0]
                .message
                .contains("or a rotation.propagationDelay of at most 7h40m"),
            "{:?}",
            rotation_timing(&o)
        );
    }

    #[test]
    fn a_leaf_renew_window_shorter_than_a_period_and_a_restart_is_refused() {
        let mut o = Overlay::default();
        // Weekly runs, 3 replicas draining 2h5m each: 7d6h15m.
        o.rotation.schedule = "0 3 * * 0".into();
        o.buildkit.replicas = 3;
        o.tekton.timeout = "2h".parse().unwrap();
        o.certs.renew_before = Some("7d".parse().unwrap());
        let errors = rotation_timing(&o);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "certs.renewBefore");
        assert!(
            errors[0]
                .message
                .contains("= 7d6h15m; use certs.renewBefore: 7d7h or more"),
            "{}",
            errors[0].message
        );
        o.certs.renew_before = Some("7d7h".parse().unwrap());
        assert_eq!(rotation_timing(&o), vec![]);
        // Without renewBefore the window is a third of the validity.
        o.certs.renew_before = None;
        o.certs.validity = "21d".parse().unwrap();
        let errors = rotation_timing(&o);
        assert_eq!(errors[0].field, "certs.validity");
        assert!(
            errors[0].message.contains("use certs.validity: 22d or more"),
            "{}",
            errors[0].message
        );
        o.certs.validity = "22d".parse().unwrap();
        assert_eq!(rotation_timing(&o), vec![]);
    }

    #[test]
    fn a_schedule_that_never_fires_is_refused_once() {
        let mut o = Overlay::default();
        o.rotation.schedule = "0 0 30 2 *".into();
        let errors = validate(&o);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "rotation.schedule");
        assert!(errors[0].message.contains("never fires"), "{}", errors[0].message);
        // A shape error is reported by the shape check alone.
        o.rotation.schedule = "every day".into();
        assert_eq!(validate(&o).len(), 1);
    }
}
