//! All YAML reading and writing goes through here (serde-saphyr underneath).

use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

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

/// Serialize one value as a YAML document (no leading `---`).
pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    serde_saphyr::to_string(value).map_err(|e| YamlError::Write(e.to_string()))
}

/// Parse one YAML document. `source_name` (a path, or `<stdin>`) goes into the error.
pub fn from_str<T: DeserializeOwned>(text: &str, source_name: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str(text).map_err(|e| YamlError::Parse {
        source_name: source_name.to_string(),
        message: one_line(&e.to_string()),
    })
}

/// Parse a stream of YAML documents separated by `---`.
pub fn from_str_multi<T: DeserializeOwned>(text: &str, source_name: &str) -> Result<Vec<T>, YamlError> {
    serde_saphyr::from_multiple(text).map_err(|e| YamlError::Parse {
        source_name: source_name.to_string(),
        message: one_line(&e.to_string()),
    })
}

/// Parse one YAML document of objects kiln passes through without knowing their types
/// (KRM function items), reading plain scalars the way Kustomize's YAML library does:
/// `0644` is octal (420, as in `defaultMode: 0644`) and only `true`/`false` are booleans
/// (`on`, `yes` stay strings). `from_str` keeps the serde-saphyr defaults.
pub fn from_str_passthrough<T: DeserializeOwned>(text: &str, source_name: &str) -> Result<T, YamlError> {
    let options = serde_saphyr::options! {
        legacy_octal_numbers: true,
        strict_booleans: true,
    };
    serde_saphyr::from_str_with_options(text, options).map_err(|e| YamlError::Parse {
        source_name: source_name.to_string(),
        message: one_line(&e.to_string()),
    })
}

/// Error messages must fit on one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parse one YAML document into a [`Node`] tree that remembers where every value was written.
/// `source` is stored in every node so trees from several files can be merged and still
/// name the file each value came from.
pub fn parse_tree(text: &str, source_name: &str, source: usize) -> Result<Node, YamlError> {
    let raw: RawNode = serde_saphyr::from_str(text).map_err(|e| YamlError::Parse {
        source_name: source_name.to_string(),
        message: first_line(&e.to_string()),
    })?;
    Ok(raw.into_node(source))
}

/// The first line of a multi-line error (serde-saphyr appends a source snippet).
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).trim().to_string()
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
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self {
            message: msg.to_string(),
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
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            if entries.iter().any(|(k, _)| k.value == key.value) {
                return Err(serde::de::Error::custom(format!(
                    "line {}: duplicate key `{}`",
                    key.referenced.line(),
                    key.value
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
