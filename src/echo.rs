//! How input appears in error messages: on one line, capped, and never a private key.
//!
//! Every error that repeats something the user gave (a value, a line, a library message
//! that quotes the input) goes through here: [`quote`] for a value kiln formats itself,
//! [`tidy`] for a whole message, which is also applied once more to every error line the
//! command line prints. Pure.

/// The most characters of an input value an error message repeats.
pub const MAX_ECHO_CHARS: usize = 80;

/// The most characters of one error message (a last resort: values are capped first).
pub const MAX_MESSAGE_CHARS: usize = 2_000;

/// What is shown instead of a private key.
pub const REDACTED: &str = "<private key not shown>";

/// A value as an error shows it: in double quotes with Rust string escapes, cut to
/// [`MAX_ECHO_CHARS`] (saying how long it was), and never a PEM private key.
pub fn quote(value: &str) -> String {
    if contains_private_key(value) {
        return REDACTED.to_string();
    }
    let chars = value.chars().count();
    if chars <= MAX_ECHO_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(MAX_ECHO_CHARS).collect();
    let quoted = format!("{head:?}");
    format!("{}…\" ({chars} characters)", &quoted[..quoted.len() - 1])
}

/// A value shown without quotes (a name in a reference, a part of a field path): cut to
/// [`MAX_ECHO_CHARS`] with `…`, and never a PEM private key.
pub fn capped(value: &str) -> String {
    if contains_private_key(value) {
        return REDACTED.to_string();
    }
    if value.chars().count() <= MAX_ECHO_CHARS {
        return value.to_string();
    }
    let head: String = value.chars().take(MAX_ECHO_CHARS).collect();
    format!("{head}…")
}

/// True when `text` holds a PEM private-key marker (`-----BEGIN … PRIVATE KEY-----`).
pub fn contains_private_key(text: &str) -> bool {
    text.contains("PRIVATE KEY-----")
}

/// The lines of `input` that belong to a PEM private-key block: from each
/// `-----BEGIN … PRIVATE KEY-----` line through its `-----END` line (or the end of the
/// input), trimmed, empty lines left out.
pub fn private_key_lines(input: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in input.lines() {
        let trimmed = line.trim();
        if !inside && trimmed.contains("-----BEGIN ") && trimmed.contains("PRIVATE KEY-----") {
            inside = true;
        }
        if inside {
            if !trimmed.is_empty() {
                out.push(trimmed);
            }
            if trimmed.contains("-----END ") {
                inside = false;
            }
        }
    }
    out
}

/// A dotted field path as an error shows it (`commonLabels.<key>`): each part longer than
/// [`MAX_ECHO_CHARS`] is cut.
pub fn field_path(path: &str) -> String {
    if path.len() <= MAX_ECHO_CHARS && !contains_private_key(path) {
        return path.to_string();
    }
    path.split('.').map(capped).collect::<Vec<_>>().join(".")
}

/// An error message made safe to print: one line (whitespace runs become one space),
/// every line of a private-key block of `input` and every PEM private-key block in the
/// message itself replaced by [`REDACTED`], every quoted (`"…"`) or back-quoted (`` `…` ``)
/// segment cut to [`MAX_ECHO_CHARS`], and the whole cut to [`MAX_MESSAGE_CHARS`].
pub fn tidy(message: &str, input: Option<&str>) -> String {
    let mut text = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(input) = input {
        for line in private_key_lines(input) {
            // Single characters would garble the message without hiding anything.
            if line.len() >= 4 && text.contains(line) {
                text = text.replace(line, REDACTED);
            }
        }
    }
    let text = cut_key_blocks(&text);
    let text = cap_quoted(&text);
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        text
    } else {
        let head: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
        format!("{head}… (message cut)")
    }
}

/// Replace every `-----BEGIN … PRIVATE KEY-----` … `-----END … PRIVATE KEY-----` span (or
/// from the BEGIN marker to the end, when there is no END) with [`REDACTED`].
fn cut_key_blocks(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(begin) = find_marker(rest, "-----BEGIN ") {
        out.push_str(&rest[..begin]);
        out.push_str(REDACTED);
        let after = &rest[begin..];
        rest = match find_marker(after, "-----END ") {
            Some(end) => {
                let tail = &after[end..];
                match tail.find("PRIVATE KEY-----") {
                    Some(close) => &tail[close + "PRIVATE KEY-----".len()..],
                    None => "",
                }
            }
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// The byte offset of the first `marker` (`-----BEGIN ` or `-----END `) in `text` that
/// names a private key.
fn find_marker(text: &str, marker: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = text[from..].find(marker) {
        let start = from + at;
        let label = &text[start + marker.len()..];
        let label_end = label.find("-----").unwrap_or(label.len());
        if label[..label_end].ends_with("PRIVATE KEY") {
            return Some(start);
        }
        from = start + marker.len();
    }
    None
}

/// Cut every `"…"` (with backslash escapes) or `` `…` `` segment longer than
/// [`MAX_ECHO_CHARS`] characters.
fn cap_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(4 * MAX_MESSAGE_CHARS));
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' && c != '`' {
            continue;
        }
        let close = c;
        let mut shown = 0usize;
        let mut hidden = 0usize;
        let mut escaped = false;
        let mut closed = false;
        // A segment already cut (80 characters and `…`) passes unchanged.
        let limit = MAX_ECHO_CHARS + 1;
        for inner in chars.by_ref() {
            if inner == close && !escaped {
                closed = true;
                break;
            }
            escaped = close == '"' && inner == '\\' && !escaped;
            if shown < limit {
                out.push(inner);
                shown += 1;
            } else {
                hidden += 1;
            }
        }
        if hidden > 0 {
            // Show MAX_ECHO_CHARS, not the one extra let through above.
            out.pop();
            // Do not leave half an escape sequence before the ellipsis.
            if out.ends_with('\\') {
                out.pop();
            }
            out.push('…');
        }
        if closed {
            out.push(close);
        }
        if hidden > 0 {
            out.push_str(&format!(" ({} characters)", shown + hidden));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Not a real key: base64 of the alphabet, in a private-key block.
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2\n-----END PRIVATE KEY-----\n";

    #[test]
    fn quote_caps_long_values_and_hides_keys() {
        assert_eq!(quote("dev"), "\"dev\"");
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        let long = "x".repeat(1_000_000);
        let shown = quote(&long);
        assert!(shown.starts_with(&format!("\"{}…\"", "x".repeat(80))), "{shown}");
        assert!(shown.ends_with("(1000000 characters)"), "{shown}");
        assert!(shown.len() < 120);
        assert_eq!(quote(KEY), REDACTED);
        // Multi-byte characters are counted, not cut in half.
        assert!(quote(&"é".repeat(200)).contains("(200 characters)"));
    }

    #[test]
    fn field_paths_keep_short_parts() {
        assert_eq!(field_path("buildkit.replicas"), "buildkit.replicas");
        let long = format!("commonLabels.{}", "k".repeat(500));
        assert_eq!(field_path(&long), format!("commonLabels.{}…", "k".repeat(80)));
    }

    #[test]
    fn key_lines_are_found_between_the_markers() {
        let input = format!("a: 1\n{KEY}b: 2\n  -----BEGIN EC PRIVATE KEY-----\n  QUJD\n");
        assert_eq!(
            private_key_lines(&input),
            [
                "-----BEGIN PRIVATE KEY-----",
                "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2",
                "-----END PRIVATE KEY-----",
                "-----BEGIN EC PRIVATE KEY-----",
                "QUJD",
            ]
        );
    }

    #[test]
    fn tidy_removes_every_line_of_a_key() {
        let body = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2";
        // A library message that quotes the input's key, folded onto one line.
        let message = format!(
            "invalid type: string \"{}\", expected a map",
            KEY.replace('\n', " ")
        );
        let shown = tidy(&message, Some(KEY));
        assert!(!shown.contains(body), "{shown}");
        assert!(!shown.contains("BEGIN PRIVATE"), "{shown}");
        // Without the input, the markers alone are enough.
        let shown = tidy(&message, None);
        assert!(!shown.contains(body), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
        // A body line quoted alone is caught through the input.
        let shown = tidy(&format!("unknown field `{body}`"), Some(KEY));
        assert!(!shown.contains(body), "{shown}");
        // An unterminated block is cut to the end.
        assert_eq!(
            tidy("x -----BEGIN RSA PRIVATE KEY----- QUJD", None),
            format!("x {REDACTED}")
        );
        // Certificates are not secret.
        assert_eq!(
            tidy("-----BEGIN CERTIFICATE----- QUJD", None),
            "-----BEGIN CERTIFICATE----- QUJD"
        );
    }

    #[test]
    fn tidy_caps_quoted_segments_and_joins_lines() {
        let long = "y".repeat(500);
        let shown = tidy(&format!("bad value \"{long}\"\n  in `{long}` here"), None);
        assert_eq!(shown.lines().count(), 1);
        assert!(
            shown.contains(&format!("\"{}…\" (500 characters)", "y".repeat(80))),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("`{}…` (500 characters)", "y".repeat(80))),
            "{shown}"
        );
        assert!(shown.ends_with(" here"), "{shown}");
        // Escaped quotes do not end a segment.
        assert_eq!(tidy(r#"a "b\"c" d"#, None), r#"a "b\"c" d"#);
        assert!(tidy(&"z ".repeat(5_000), None).ends_with("… (message cut)"));
        // Capping twice changes nothing.
        let once = tidy(&format!("value {}", quote(&long)), None);
        assert_eq!(tidy(&once, None), once);
        assert_eq!(once, format!("value \"{}…\" (500 characters)", "y".repeat(80)));
    }
}
