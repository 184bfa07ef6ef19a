//! All YAML reading and writing goes through here (serde-saphyr underneath).

use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// Error messages must fit on one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

