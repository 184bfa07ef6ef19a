//! Reading PEM: telling text from DER or other binary data, and splitting a bundle into
//! its blocks in one linear pass (rustls-pki-types' reader). Messages never repeat a line
//! of the input: a malformed line may belong to a private key.

use rustls::pki_types::pem::{self, PemObject, SectionKind};

use super::PkiError;

/// The largest PEM file kiln reads: 16 MiB (a bundle of 1,000 certificates is about 1.5 MiB).
pub const MAX_PEM_BYTES: usize = 16 * 1024 * 1024;

/// The bytes of a file that should hold PEM, as text. DER (an ASN.1 SEQUENCE) and other
/// binary data are refused with a message saying how to convert; `name` (the file) goes
/// into the openssl command of that message.
pub fn pem_text(bytes: Vec<u8>, name: &str) -> Result<String, PkiError> {
    if bytes.len() > MAX_PEM_BYTES {
        return Err(PkiError::TooLarge {
            size: bytes.len(),
            limit: MAX_PEM_BYTES,
        });
    }
    // Every certificate and key in DER is an ASN.1 SEQUENCE: it starts with 0x30.
    let looks_like_der = bytes.first() == Some(&0x30);
    match String::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => Ok(text),
        _ if looks_like_der => Err(PkiError::Der {
            name: name.to_string(),
            out: pem_name(name),
        }),
        _ => Err(PkiError::Binary),
    }
}

/// Where a converted copy of the DER file `name` could go: `ca.der` → `ca.pem`, and
/// `ca.pem` (DER under a PEM name) → `ca.converted.pem`.
fn pem_name(name: &str) -> String {
    let path = std::path::Path::new(name);
    let candidate = path.with_extension("pem").display().to_string();
    if candidate == name {
        path.with_extension("converted.pem").display().to_string()
    } else {
        candidate
    }
}

/// The DER bodies of every `CERTIFICATE` block in `text`, in order; other blocks (such as
/// a private key kept in the same file) are skipped. One pass over the text.
pub(super) fn certificate_ders(text: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let mut ders = Vec::new();
    for (index, block) in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()).enumerate() {
        let (kind, der) = block.map_err(|e| PkiError::ParsePem {
            index: index + 1,
            message: pem_message(&e).to_string(),
        })?;
        if kind == SectionKind::Certificate {
            ders.push(der);
        }
    }
    if ders.is_empty() {
        return Err(PkiError::NoCertificate);
    }
    Ok(ders)
}

/// A PEM reading error in words, without the offending line.
fn pem_message(error: &pem::Error) -> &'static str {
    match error {
        pem::Error::MissingSectionEnd { .. } => "it has no -----END line",
        pem::Error::IllegalSectionStart { .. } => {
            "its -----BEGIN line is malformed (it must end in five dashes)"
        }
        pem::Error::Base64Decode(_) => "its body is not valid base64",
        pem::Error::SectionTooLarge => "it is larger than 256 MB",
        _ => "it is not valid PEM",
    }
}

/// A private-key read error in words. The pem crate's own text quotes the BEGIN and END
/// lines it found, line breaks and all, and whatever sits between them: never shown.
pub(super) fn key_message(error: &rcgen::Error) -> String {
    match error {
        rcgen::Error::PemError(_) => {
            "it is not valid PEM (a -----BEGIN line, base64, and the matching -----END line)".into()
        }
        rcgen::Error::CouldNotParseKeyPair | rcgen::Error::RingKeyRejected(_) => {
            "its PEM block does not hold a private key kiln can read".into()
        }
        other => crate::echo::tidy(&other.to_string(), None),
    }
}

/// An X.509 parse error in words (x509-parser's own text is its Rust Debug output).
pub(super) fn x509_message(error: &x509_parser::nom::Err<x509_parser::error::X509Error>) -> String {
    use x509_parser::error::X509Error;
    match error {
        x509_parser::nom::Err::Incomplete(_) => "its DER encoding is cut short".into(),
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => match e {
            X509Error::Der(_) | X509Error::NomError(_) | X509Error::Generic => {
                "its DER encoding is not an X.509 certificate".into()
            }
            other => format!("it is not a valid X.509 certificate ({other})"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT_BODY: &str = "MIIBfzCCASWgAwIBAgIUB";

    #[test]
    fn der_and_binary_are_named_as_such() {
        let err = pem_text(vec![0x30, 0x82, 0x01, 0x7f, 0xff, 0x00], "ca.der").unwrap_err();
        assert_eq!(
            err.to_string(),
            "it is DER (binary), not PEM: kiln reads PEM; convert it with `openssl x509 -inform der -in ca.der -out ca.pem` (a key: `openssl pkey -inform der -in ca.der -out ca.pem`)"
        );
        assert_eq!(pem_name("tls/ca.pem"), "tls/ca.converted.pem");
        assert_eq!(pem_name("cert"), "cert.pem");
        let err = pem_text(vec![0xff, 0xfe, 0x00], "x").unwrap_err();
        assert_eq!(err.to_string(), "it is binary data, not PEM text");
        assert_eq!(pem_text(b"text\n".to_vec(), "x").unwrap(), "text\n");
    }

    #[test]
    fn key_errors_never_repeat_the_input() {
        let text = "-----BEGIN SECRETSTUFF-----\nQUJD\n-----END OTHERSTUFF-----\n";
        let err = rcgen::KeyPair::from_pem(text).unwrap_err();
        assert!(
            err.to_string().contains("OTHERSTUFF"),
            "the library's own text: {err}"
        );
        let shown = key_message(&err);
        assert_eq!(
            shown,
            "it is not valid PEM (a -----BEGIN line, base64, and the matching -----END line)"
        );
    }

    #[test]
    fn errors_never_repeat_the_line() {
        let secret = "-----BEGIN PRIVATE KEY-----secretstuff\nQUJD\n-----END PRIVATE KEY-----\n";
        let err = certificate_ders(secret).unwrap_err().to_string();
        assert!(!err.contains("secretstuff"), "{err}");
        assert_eq!(
            err,
            "failed to read PEM block 1: its -----BEGIN line is malformed (it must end in five dashes)"
        );
        let unterminated = format!("-----BEGIN CERTIFICATE-----\n{CERT_BODY}\n");
        assert_eq!(
            certificate_ders(&unterminated).unwrap_err().to_string(),
            "failed to read PEM block 1: it has no -----END line"
        );
        let bad = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert_eq!(
            certificate_ders(bad).unwrap_err().to_string(),
            "failed to read PEM block 1: its body is not valid base64"
        );
    }
}
