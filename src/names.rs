//! Kubernetes name rules: DNS-1123 labels and subdomains, label keys and values.
//!
//! Pure, and at the bottom of the crate: the overlay model, the PKI, render, build and
//! the KRM plugin all check names with these, so none of them imports another for it.

/// What a DNS-1123 label may hold, for messages: `invalid --namespace "X": {LABEL_RULE}`.
pub const LABEL_RULE: &str = "use lowercase letters, digits and '-', at most 63 characters";

/// How much of a value an error echoes.
const QUOTE_MAX: usize = 80;

/// `value` quoted for an error message, cut to 80 characters (with its length in bytes when
/// cut), control characters escaped: an error never echoes a whole hostile value.
pub fn quoted(value: &str) -> String {
    if value.chars().count() <= QUOTE_MAX {
        return format!("{value:?}");
    }
    let cut: String = value.chars().take(QUOTE_MAX).collect();
    format!("{cut:?}… ({} bytes)", value.len())
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

/// True for a Kubernetes kind (`ConfigMap`, `Task`): the API server requires its lowercase form
/// to be a DNS-1035 label, so a letter first, then letters, digits or `-`, at most 63 characters,
/// not ending in `-`. Mixed case is allowed.
pub fn is_kind(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// True for a label value: empty, or at most 63 alphanumerics, `-`, `_`, `.`, alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// True for a label or annotation key: `[prefix/]name`, the prefix a DNS-1123 subdomain.
pub fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns1123_label("buildkit-dev"));
        for bad in ["", "Buildkit", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad:?}");
        }
        assert!(is_dns1123_subdomain("buildkit.ca-1"));
        assert!(!is_dns1123_subdomain("a..b"));
    }

    #[test]
    fn kinds() {
        for good in ["ConfigMap", "Task", "v1Thing", "Odd-Kind", "lowercase"] {
            assert!(is_kind(good), "{good:?}");
        }
        for bad in [
            "",
            "1Kind",
            "-Kind",
            "Kind-",
            "../x",
            "Con fig",
            "Kind.x",
            "a/b",
            &"K".repeat(64),
        ] {
            assert!(!is_kind(bad), "{bad:?}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(is_label_key("team"));
        assert!(!is_label_key("Bad_Prefix/x"));
        assert!(!is_label_key("a/"));
        assert!(is_label_value(""));
        assert!(is_label_value("v0.23.2"));
        assert!(!is_label_value("-x"));
    }
}
