//! What each fuzz target checks, shared by the targets (fuzz/fuzz_targets/*.rs, run by
//! scripts/fuzz) and by tests/hostile.rs, which replays fuzz/seeds/ and fuzz/regressions/
//! (every crash the fuzzer found) under plain `cargo test`.
//!
//! Beyond "no panic, no abort, no hang" (libFuzzer's own checks, with `-timeout`), every
//! error a parser returns must be one line, bounded in length, and free of any line of a
//! PEM private key in the input.
#![allow(dead_code)]

use std::collections::BTreeMap;

use kiln::overlay::{Resolver, Sources};
use kiln::template::{self, Budget, Dialect};

/// The longest error message a parser may return (values inside are capped far shorter).
const MAX_ERROR_CHARS: usize = 4_096;

/// Assert what every error message must be.
fn check_message(message: &str, input: &str) {
    assert!(!message.contains('\n'), "a multi-line error: {message:?}");
    assert!(
        message.chars().count() <= MAX_ERROR_CHARS,
        "an error of {} characters",
        message.chars().count()
    );
    // The secret is the base64 body of a key block (markers and short fragments are not).
    for line in kiln::echo::private_key_lines(input) {
        let body = line.len() >= 16
            && line
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
        if body {
            assert!(
                !message.contains(line),
                "an error shows a private-key line: {message:?}"
            );
        }
    }
}

/// Overlay files separated by NUL bytes: `dev.yaml`, `base.yaml`, `_common.yaml`, and an
/// extra manifest template of dev. dev is resolved (extends, templates, validation) and,
/// when that works, rendered.
pub fn overlay(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let mut files = BTreeMap::new();
    for name in ["dev", "base", "_common"] {
        if let Some(part) = parts.next() {
            files.insert(name.to_string(), part.to_string());
        }
    }
    let mut sources = Sources::from_memory("overlays", files);
    if let Some(extra) = parts.next() {
        sources.add_extra("dev", "x.yaml.hbs", extra);
    }
    match Resolver::new(&sources).resolve("dev") {
        Ok(resolved) => {
            if let Err(e) = kiln::render::render_resolved(&resolved) {
                check_message(&e.to_string(), &text);
            }
        }
        Err(e) => check_message(&e.to_string(), &text),
    }
}

/// A KRM ResourceList (YAML or JSON): read, run the function, write back; the items that
/// went in come back out unchanged.
pub fn krm(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (list, format) = match kiln::krm::parse_resource_list(text, "<stdin>") {
        Ok(read) => read,
        Err(e) => return check_message(&e.to_string(), text),
    };
    let items = list.items.clone();
    let outcome = kiln::krm::process(list, |stack| {
        kiln::krm::generate(stack, "overlays", BTreeMap::new())
    });
    for result in &outcome.list.results {
        check_message(&result.message, text);
    }
    let written = kiln::krm::write_resource_list(&outcome.list, format).expect("a read list can be written");
    let (again, _) = kiln::krm::parse_resource_list(&written, "<out>").expect("a written list reads back");
    assert_eq!(
        again.items[..items.len()],
        items[..],
        "items changed on the way through"
    );
}

/// A PEM bundle (or anything given where one is expected): text check, certificates,
/// fingerprint, key match.
pub fn pem(data: &[u8]) {
    let text = match kiln::pki::pem_text(data.to_vec(), "fuzz.pem") {
        Ok(text) => text,
        Err(e) => return check_message(&e.to_string(), ""),
    };
    match kiln::pki::parse_bundle(&text) {
        Ok(summaries) => assert!(!summaries.is_empty()),
        Err(e) => check_message(&e.to_string(), &text),
    }
    if let Err(e) = kiln::pki::fingerprint(&text) {
        check_message(&e.to_string(), &text);
    }
    if let Err(e) = kiln::pki::key_matches(&text, &text) {
        check_message(&e.to_string(), &text);
    }
}

/// A template, in both dialects, against the context an overlay renders with.
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let context = serde_json::json!({
        "overlay": "dev",
        "namespace": "buildkit-dev",
        "buildkit": {"version": "v0.23.2", "image": "docker.io/moby/buildkit", "serviceName": "buildkitd"},
        "kiln": {"version": "0.1.0", "image": "ghcr.io/kiln-dev/kiln:0.1.0"},
    });
    for dialect in [Dialect::Value, Dialect::Manifest] {
        let mut budget = Budget::default();
        match template::render(&text, &context, dialect, &mut budget) {
            Ok(out) => {
                assert!(out.len() <= template::MAX_OUTPUT_BYTES);
                if !template::is_template(&text) {
                    assert_eq!(out, text, "a text without {{{{ changed");
                }
            }
            Err(e) => check_message(&e.to_string(), &text),
        }
    }
}

/// A build-history answer as a daemon streams it (gRPC frames of BuildHistoryEvents): read
/// whole and in two pieces split where the first byte says, the counts agree, stay within
/// what the bytes can hold, and never exceed the finished-build limit.
pub fn history(data: &[u8]) {
    use kiln::build::history::{self, FINISHED_LIMIT, Tally};
    let repository = "registry.example.com/team/app";
    let whole = history::summarize(data, repository);
    if let Ok(load) = &whole {
        assert!(load.active_same <= load.active && load.finished_same <= load.finished);
        assert!(load.finished <= FINISHED_LIMIT);
        assert!(
            load.reported() as usize <= data.len() / 5,
            "every event takes a 5-byte frame header"
        );
    }
    let split = data.first().map_or(0, |b| usize::from(*b) * data.len() / 256);
    let mut tally = Tally::new(repository);
    let pieces = match tally.feed(&data[..split]) {
        Ok(true) => tally.finish(&data[..split]),
        Ok(false) => tally.finish(data),
        Err(e) => Err(e),
    };
    // Both read the same frames in the same order and stop at the same one.
    match (&whole, &pieces) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "read whole and in pieces"),
        (Err(a), Err(b)) => assert_eq!(a, b, "read whole and in pieces"),
        (a, b) => panic!("whole {a:?}, in pieces {b:?}"),
    }
    if let Err(e) = &whole {
        check_message(&e.to_string(), "");
    }
}
