//! Value checks that types alone cannot express: names, quantities, schedules, lifetimes.
//! Pure: each check returns the dotted field path and what is wrong.

use super::Overlay;

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

/// True for a DNS-1123 label: at most 63 lowercase alphanumerics or `-`, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// True for a DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// True for a label value: empty, or at most 63 alphanumerics, `-`, `_`, `.`, alphanumeric at both ends.
fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// True for a label or annotation key: `[prefix/]name`.
fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
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
    if b.version.is_empty() || b.version.contains(char::is_whitespace) || b.version.len() > 63 {
        out.push(invalid(
            "buildkit.version",
            "must be a BuildKit release tag, such as v0.23.2",
        ));
    }
    if !is_image(&b.image) {
        out.push(invalid(
            "buildkit.image",
            "must be an image repository, such as docker.io/moby/buildkit",
        ));
    }
    label(&mut out, "buildkit.serviceName", &b.service_name);
    if b.service_name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push(invalid(
            "buildkit.serviceName",
            "a Service name must start with a letter",
        ));
    }
    // Deployment and StatefulSet replicas are int32 in the Kubernetes API.
    if i32::try_from(b.replicas).is_err() {
        out.push(invalid(
            "buildkit.replicas",
            format!("must be at most {}, got {}", i32::MAX, b.replicas),
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
    if !b.cache_size.is_empty() && !is_quantity(&b.cache_size) {
        out.push(invalid(
            "buildkit.cacheSize",
            format!("{:?} is not a Kubernetes quantity, such as 50Gi", b.cache_size),
        ));
    }

    let t = &o.tekton;
    subdomain(&mut out, "tekton.name", &t.name);
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

    if !is_image(&o.kiln.image) {
        out.push(invalid(
            "kiln.image",
            "must be an image reference, such as ghcr.io/kiln-dev/kiln:0.1.0",
        ));
    }

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
    fn names() {
        assert!(is_dns1123_label("buildkit-dev"));
        for bad in ["", "Buildkit", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad:?}");
        }
        assert!(is_dns1123_subdomain("buildkit.ca-1"));
        assert!(!is_dns1123_subdomain("a..b"));
    }

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
