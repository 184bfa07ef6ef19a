//! All YAML reading and writing goes through here (serde-saphyr underneath).
//!
//! Every read is bounded before and while it parses ([`MAX_YAML_BYTES`], [`MAX_NODES`],
//! [`MAX_DEPTH`], [`MAX_DOCUMENTS`], [`MAX_ALIASES`], [`MAX_ALIAS_EXPANSION`]), and every
//! parse error is formatted in one place ([`parse_error`]): one line, in the user's terms,
//! values capped and private-key lines of the input never shown (see [`crate::echo`]).

use std::borrow::Cow;
use std::collections::HashSet;

use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{MessageFormatter, Spanned};

use crate::echo;

/// The largest YAML text kiln reads (an overlay, an extra manifest after rendering, a
/// ResourceList, a `--config` file, a Secret file): 16 MiB.
pub const MAX_YAML_BYTES: usize = 16 * 1024 * 1024;
/// The most values (keys, scalars, lists and maps) one YAML text may hold.
pub const MAX_NODES: usize = 250_000;
/// The deepest nesting of lists and maps.
pub const MAX_DEPTH: usize = 64;
/// The most `---` documents in one stream.
pub const MAX_DOCUMENTS: usize = 1_024;
/// The most aliases (`*name`) in one text.
pub const MAX_ALIASES: usize = 10_000;
/// The most values that aliases may replay in total: an alias bomb stops here.
pub const MAX_ALIAS_EXPANSION: usize = 100_000;

/// A YAML document that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// The text is not valid YAML for the expected type.
    #[error("failed to parse {source_name}: {message}")]
    Parse { source_name: String, message: String },
    /// A value could not be written as YAML.
    #[error("failed to write YAML: {0}")]
    Write(String),
}

impl YamlError {
    /// The message without the "failed to parse <source>" prefix.
    pub fn message(&self) -> &str {
        match self {
            YamlError::Parse { message, .. } | YamlError::Write(message) => message,
        }
    }
}

/// Serialize one value as a YAML document (no leading `---`).
pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    serde_saphyr::to_string(value).map_err(|e| YamlError::Write(e.to_string()))
}

/// kiln's reading options: the limits above, no source snippets in errors.
fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_NODES;
    budget.max_depth = MAX_DEPTH;
    budget.max_documents = MAX_DOCUMENTS;
    budget.max_aliases = MAX_ALIASES;
    budget.max_reader_input_bytes = Some(MAX_YAML_BYTES);
    let mut options = serde_saphyr::options! {
        budget: Some(budget),
        // Snippets print lines of the input: of a key file, its secret.
        with_snippet: false,
        crop_radius: 0,
    };
    options.alias_limits.max_total_replayed_events = MAX_ALIAS_EXPANSION;
    options
}

/// Refuse a text over [`MAX_YAML_BYTES`] before parsing any of it.
fn check_size(text: &str, source_name: &str) -> Result<(), YamlError> {
    if text.len() > MAX_YAML_BYTES {
        return Err(YamlError::Parse {
            source_name: source_name.to_string(),
            message: format!(
                "it is {} bytes; kiln reads YAML of at most {MAX_YAML_BYTES} bytes (16 MiB)",
                text.len()
            ),
        });
    }
    Ok(())
}

/// Parse one YAML document. `source_name` (a path, or `<stdin>`) goes into the error.
pub fn from_str<T: DeserializeOwned>(text: &str, source_name: &str) -> Result<T, YamlError> {
    check_size(text, source_name)?;
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| parse_error(&e, text, source_name))
}

/// Parse one YAML document from the bytes of a file: binary data (DER, an image, …) is
/// named as such instead of failing as invalid UTF-8.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8], source_name: &str) -> Result<T, YamlError> {
    let text = std::str::from_utf8(bytes).map_err(|_| YamlError::Parse {
        source_name: source_name.to_string(),
        message: "it is binary data, not YAML text".to_string(),
    })?;
    from_str(text, source_name)
}

/// Parse a stream of YAML documents separated by `---`.
pub fn from_str_multi<T: DeserializeOwned>(text: &str, source_name: &str) -> Result<Vec<T>, YamlError> {
    check_size(text, source_name)?;
    serde_saphyr::from_multiple_with_options(text, options()).map_err(|e| parse_error(&e, text, source_name))
}

/// Parse one YAML document of objects kiln passes through without knowing their types
/// (KRM function items), reading plain scalars the way Kustomize's YAML library does:
/// `0644` is octal (420, as in `defaultMode: 0644`) and only `true`/`false` are booleans
/// (`on`, `yes` stay strings). `from_str` keeps the serde-saphyr defaults.
pub fn from_str_passthrough<T: DeserializeOwned>(text: &str, source_name: &str) -> Result<T, YamlError> {
    check_size(text, source_name)?;
    let mut options = options();
    options.legacy_octal_numbers = true;
    options.strict_booleans = true;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| parse_error(&e, text, source_name))
}

/// The one place a YAML parse error becomes a message: `line L column C: what`, in the
/// user's terms, through [`echo::tidy`] with the input (so no line of a private key in
/// `text` can appear).
pub fn parse_error(error: &serde_saphyr::Error, text: &str, source_name: &str) -> YamlError {
    let inner = innermost(error);
    // A key or certificate given where YAML belongs: say so, and nothing of its text.
    if text.trim_start().starts_with("-----BEGIN ") {
        return YamlError::Parse {
            source_name: source_name.to_string(),
            message: "it is PEM (a certificate or key), not YAML".to_string(),
        };
    }
    let what = describe(inner);
    let message = match error.location().filter(|l| l.line() > 0) {
        Some(at) => format!("line {} column {}: {what}", at.line(), at.column()),
        None => what.into_owned(),
    };
    YamlError::Parse {
        source_name: source_name.to_string(),
        message: echo::tidy(&message, Some(text)),
    }
}

/// The error under serde-saphyr's snippet and alias wrappers.
fn innermost(mut error: &serde_saphyr::Error) -> &serde_saphyr::Error {
    use serde_saphyr::Error;
    while let Error::WithSnippet { error: inner, .. } | Error::AliasError { error: inner, .. } = error {
        error = inner;
    }
    error
}

/// What went wrong, without the location.
fn describe(error: &serde_saphyr::Error) -> Cow<'_, str> {
    use serde_saphyr::Error;
    match error {
        Error::MultipleDocuments { .. } => Cow::Borrowed(
            "holds more than one YAML document (a `---` line starts another); this input takes exactly one: remove the others",
        ),
        Error::Budget { breach, .. } => Cow::Owned(breach_text(breach)),
        Error::AliasReplayLimitExceeded { .. }
        | Error::AliasExpansionLimitExceeded { .. }
        | Error::AliasReplayStackDepthExceeded { .. }
        | Error::AliasReplayCounterOverflow { .. } => Cow::Owned(format!(
            "its aliases (`*name`) expand to more than {MAX_ALIAS_EXPANSION} values, which looks like an alias bomb; write the values out instead"
        )),
        Error::InvalidUtf8Input => Cow::Borrowed("is not UTF-8 text"),
        Error::Eof { .. } => Cow::Borrowed("the text ends in the middle of a value"),
        other => {
            let text = serde_saphyr::UserMessageFormatter.format_message(other);
            // The parser's own guard against deep flow nesting (`[[[[…`).
            if text.contains("recursion limit exceeded") {
                Cow::Owned(breach_text(&BudgetBreach::Depth { depth: MAX_DEPTH + 1 }))
            } else {
                text
            }
        }
    }
}

/// A budget breach in words, naming the limit.
fn breach_text(breach: &BudgetBreach) -> String {
    match breach {
        BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => format!(
            "holds more than {MAX_NODES} values (keys, scalars, lists and maps), kiln's limit for one YAML text"
        ),
        BudgetBreach::Depth { .. } => {
            format!("nests lists and maps more than {MAX_DEPTH} levels deep, kiln's limit")
        }
        BudgetBreach::Documents { .. } => {
            format!("holds more than {MAX_DOCUMENTS} documents (`---`), kiln's limit")
        }
        BudgetBreach::Aliases { .. } | BudgetBreach::Anchors { .. } => {
            format!("uses more than {MAX_ALIASES} aliases or anchors (`*name`, `&name`), kiln's limit")
        }
        BudgetBreach::AliasAnchorRatio { aliases, anchors } => format!(
            "uses {aliases} aliases (`*name`) for {anchors} anchors (`&name`), which looks like an alias bomb; write the values out instead"
        ),
        BudgetBreach::InputBytes { .. } | BudgetBreach::ScalarBytes { .. } => {
            format!("is too large; kiln reads YAML of at most {MAX_YAML_BYTES} bytes (16 MiB)")
        }
        _ => "is too large or too deeply nested for kiln's YAML limits".to_string(),
    }
}

/// The `kind` of every document of a YAML stream, when the text is a stream of mappings
/// (None for anything else, such as a text file that is not YAML at all). Lets a caller
/// tell "a broken Secret" from "not what was asked for", whose content it must not echo.
pub fn document_kinds(text: &str) -> Option<Vec<String>> {
    let docs: Vec<serde_json::Value> = from_str_multi(text, "").ok()?;
    docs.iter()
        .filter(|doc| !doc.is_null())
        .map(|doc| {
            let kind = doc.as_object()?.get("kind")?.as_str()?;
            Some(kind.to_string())
        })
        .collect()
}

/// Parse one YAML document into a [`Node`] tree that remembers where every value was written.
/// `source` is stored in every node so trees from several files can be merged and still
/// name the file each value came from.
pub fn parse_tree(text: &str, source_name: &str, source: usize) -> Result<Node, YamlError> {
    check_size(text, source_name)?;
    let raw: RawNode = serde_saphyr::from_str_with_options(text, options())
        .map_err(|e| parse_error(&e, text, source_name))?;
    Ok(raw.into_node(source))
}

/// A YAML value with the place it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: NodeValue,
    /// 1-based line of the value (0 when unknown).
    pub line: u64,
    /// Which source (file) the value came from, as numbered by the caller of [`parse_tree`].
    pub source: usize,
}

/// The value of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    /// `~`, `null` or nothing.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer or a float.
    Number(serde_json::Number),
    /// A string scalar.
    String(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order.
    Map(Vec<Entry>),
}

/// One `key: value` of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// 1-based line of the key.
    pub line: u64,
    /// The value.
    pub value: Node,
}

impl Node {
    /// A node that no file wrote (such as the embedded default).
    pub fn new(value: NodeValue, source: usize) -> Self {
        Self {
            value,
            line: 0,
            source,
        }
    }

    /// The entries, when this node is a mapping.
    pub fn entries(&self) -> Option<&[Entry]> {
        match &self.value {
            NodeValue::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value under `key`, when this node is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    /// The value under a dotted path of mapping keys, such as `buildkit.replicas`.
    pub fn get_path(&self, path: &str) -> Option<&Node> {
        path.split('.').try_fold(self, |node, key| node.get(key))
    }

    /// The string, when this node is a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Deserialize a typed value from this tree. Errors name the source, line and field path.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, TreeError> {
        T::deserialize(NodeDeserializer {
            node: self,
            path: String::new(),
        })
        .map_err(|e| e.locate(self.source, self.line, ""))
    }

    /// Convert to a JSON value (for objects that are written back out).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Number(n) => Value::Number(n.clone()),
            NodeValue::String(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A value in a [`Node`] tree that does not fit the type it is read into.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct TreeError {
    /// What is wrong, such as "unknown field `bogus`, expected one of …".
    pub message: String,
    /// The source, line and dotted field path of the offending value, once known.
    pub at: Option<(usize, u64, String)>,
}

impl TreeError {
    /// Attach a place to an error that has none yet (the innermost place wins).
    fn locate(mut self, source: usize, line: u64, path: &str) -> Self {
        if self.at.is_none() {
            self.at = Some((source, line, path.to_string()));
        }
        self
    }
}

impl serde::de::Error for TreeError {
    /// Library messages quote the value (`invalid type: string "…"`): capped here.
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self {
            message: echo::tidy(&msg.to_string(), None),
            at: None,
        }
    }
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A serde Deserializer over a [`Node`], tracking the field path for error messages.
struct NodeDeserializer<'de> {
    node: &'de Node,
    path: String,
}

impl<'de> NodeDeserializer<'de> {
    /// Deserialize an unsigned number, naming the field when the value is negative.
    fn unsigned<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        if let NodeValue::Number(n) = &self.node.value
            && n.as_i64().is_some_and(|i| i < 0)
        {
            return Err(serde::de::Error::custom(format!("must be 0 or more, got {n}")));
        }
        serde::Deserializer::deserialize_any(self, visitor)
    }
}

impl<'de> serde::Deserializer<'de> for NodeDeserializer<'de> {
    type Error = TreeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        match &self.node.value {
            NodeValue::Null => visitor.visit_unit(),
            NodeValue::Bool(b) => visitor.visit_bool(*b),
            NodeValue::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or_default())
                }
            }
            NodeValue::String(s) => visitor.visit_borrowed_str(s),
            NodeValue::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
                path: self.path.clone(),
                index: 0,
            }),
            NodeValue::Map(entries) => visitor.visit_map(MapAccess {
                entries: entries.iter(),
                path: self.path.clone(),
                current: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        match self.node.value {
            NodeValue::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        match &self.node.value {
            NodeValue::String(s) => visitor.visit_enum(serde::de::value::BorrowedStrDeserializer::new(s)),
            _ => Err(serde::de::Error::custom(format!(
                "expected one of {}",
                variants.join(", ")
            ))),
        }
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        self.unsigned(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        self.unsigned(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        self.unsigned(visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        self.unsigned(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u128 f32 f64 char str string bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

struct SeqAccess<'de> {
    items: std::slice::Iter<'de, Node>,
    path: String,
    index: usize,
}

impl<'de> serde::de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = TreeError;

    fn next_element_seed<T: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TreeError> {
        let Some(node) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        seed.deserialize(NodeDeserializer {
            node,
            path: path.clone(),
        })
        .map(Some)
        .map_err(|e| e.locate(node.source, node.line, &path))
    }
}

struct MapAccess<'de> {
    entries: std::slice::Iter<'de, Entry>,
    path: String,
    current: Option<&'de Entry>,
}

impl<'de> serde::de::MapAccess<'de> for MapAccess<'de> {
    type Error = TreeError;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TreeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.current = Some(entry);
        let key: serde::de::value::BorrowedStrDeserializer<'de, TreeError> =
            serde::de::value::BorrowedStrDeserializer::new(&entry.key);
        seed.deserialize(key).map(Some).map_err(|e| {
            e.locate(
                entry.value.source,
                entry.line,
                &child_path(&self.path, &entry.key),
            )
        })
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TreeError> {
        let Some(entry) = self.current.take() else {
            return Err(serde::de::Error::custom("value requested before its key"));
        };
        let path = child_path(&self.path, &entry.key);
        seed.deserialize(NodeDeserializer {
            node: &entry.value,
            path: path.clone(),
        })
        .map_err(|e| e.locate(entry.value.source, entry.value.line.max(entry.line), &path))
    }
}

/// serde-saphyr's view of a node: a value wrapped with its location.
struct RawNode(Spanned<RawValue>);

enum RawValue {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Seq(Vec<RawNode>),
    Map(Vec<(Spanned<String>, RawNode)>),
}

impl RawNode {
    fn into_node(self, source: usize) -> Node {
        let line = self.0.referenced.line();
        let value = match self.0.value {
            RawValue::Null => NodeValue::Null,
            RawValue::Bool(b) => NodeValue::Bool(b),
            RawValue::Number(n) => NodeValue::Number(n),
            RawValue::String(s) => NodeValue::String(s),
            RawValue::Seq(items) => NodeValue::Seq(items.into_iter().map(|n| n.into_node(source)).collect()),
            RawValue::Map(entries) => NodeValue::Map(
                entries
                    .into_iter()
                    .map(|(key, value)| Entry {
                        line: key.referenced.line(),
                        key: key.value,
                        value: value.into_node(source),
                    })
                    .collect(),
            ),
        };
        Node { value, line, source }
    }
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Spanned::<RawValue>::deserialize(deserializer).map(RawNode)
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<RawValue, E> {
        Ok(RawValue::Null)
    }
    fn visit_none<E>(self) -> Result<RawValue, E> {
        Ok(RawValue::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<RawValue, D::Error> {
        RawValue::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<RawValue, E> {
        Ok(RawValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<RawValue, E> {
        Ok(RawValue::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawValue, E> {
        serde_json::Number::from_f64(v)
            .map(RawValue::Number)
            .ok_or_else(|| E::custom(format!("unsupported number {v}")))
    }
    fn visit_str<E>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<RawValue, E> {
        Ok(RawValue::String(v))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<RawNode>()? {
            items.push(item);
        }
        Ok(RawValue::Seq(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        let mut entries: Vec<(Spanned<String>, RawNode)> = Vec::new();
        // A set, not a scan of `entries`: a map of n keys is checked in O(n).
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            if !seen.insert(key.value.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "line {}: duplicate key {}",
                    key.referenced.line(),
                    echo::quote(&key.value)
                )));
            }
            let value = map.next_value::<RawNode>()?;
            entries.push((key, value));
        }
        Ok(RawValue::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_remembers_lines() {
        let tree = parse_tree("a:\n  b: 1\n  c:\n    - x\n", "t.yaml", 3).unwrap();
        let b = tree.get_path("a.b").unwrap();
        assert_eq!((b.line, b.source), (2, 3));
        assert_eq!(tree.get_path("a.c").unwrap().to_json(), serde_json::json!(["x"]));
    }

    #[test]
    fn tree_deserialize_names_the_path() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Inner {
            #[allow(dead_code)]
            n: u32,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            inner: Vec<Inner>,
        }
        let tree = parse_tree("inner:\n  - n: 1\n  - n: -4\n", "t.yaml", 0).unwrap();
        let err = tree.deserialize::<Outer>().unwrap_err();
        assert_eq!(err.at, Some((0, 3, "inner[1].n".to_string())));
        assert_eq!(err.message, "must be 0 or more, got -4");
        let tree = parse_tree("inner:\n  - n: 1\n    m: 2\n", "t.yaml", 0).unwrap();
        let err = tree.deserialize::<Outer>().unwrap_err();
        assert_eq!(err.at, Some((0, 3, "inner[0].m".to_string())));
        assert!(err.message.contains("unknown field `m`"), "{}", err.message);
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse_tree("a: 1\na: 2\n", "t.yaml", 0).unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
