//! How many builds a daemon is running, read from BuildKit's build-history API: the
//! `ListenBuildHistory` call behind `buildctl debug histories`, asked natively over gRPC
//! with the mTLS the preflight uses (docs/build.md has the figures against running
//! buildctl).
//!
//! The request is `BuildHistoryRequest{ActiveOnly: true, EarlyExit: true}`: the daemon sends
//! one `BuildHistoryEvent` per active build and ends the stream. The few protobuf fields
//! involved are encoded and decoded here by hand ([`request_message`], [`count_active`]:
//! pure, bounded, and total over any input); [`active_builds`] is the network edge.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::Daemon;
use super::preflight::{self, HandshakeFailure};

/// The gRPC method: service `moby.buildkit.v1.Control`, server-streaming.
pub const METHOD: &str = "/moby.buildkit.v1.Control/ListenBuildHistory";

/// The largest answer read (all gRPC messages together): active build records are a few
/// KiB each, so this is thousands of builds. A bigger answer counts as no answer.
pub const MAX_BODY: usize = 8 << 20;

/// `BuildHistoryRequest{ActiveOnly (1): true, EarlyExit (3): true}` in protobuf.
pub fn request_message() -> Vec<u8> {
    vec![0x08, 0x01, 0x18, 0x01]
}

/// `message` in a gRPC frame: an uncompressed flag, the 4-byte big-endian length, the bytes.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Why an answer is not a build-history stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body ends inside a gRPC frame or a protobuf field.
    #[error("the answer ends in the middle of a message")]
    Truncated,
    /// The frame says compressed, and kiln asked for no compression.
    #[error("the answer is compressed, although kiln asked for none")]
    Compressed,
    /// A varint longer than 10 bytes.
    #[error("the answer holds a malformed number")]
    BadVarint,
    /// A wire type protobuf does not define, or a group.
    #[error("the answer holds protobuf wire type {0}, which a BuildHistoryEvent never uses")]
    WireType(u8),
    /// More than [`MAX_BODY`] bytes.
    #[error("the answer is larger than {} MiB", MAX_BODY >> 20)]
    TooLarge,
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for shift in 0..10 {
        let byte = *bytes.get(*at).ok_or(DecodeError::Truncated)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << (7 * shift);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::BadVarint)
}

/// The `type` (field 1) of one `BuildHistoryEvent`: STARTED is 0 (and absent), COMPLETE 1,
/// DELETED 2. Every other field (the record) is skipped unread.
pub fn event_type(message: &[u8]) -> Result<u64, DecodeError> {
    let mut at = 0;
    let mut kind = 0;
    while at < message.len() {
        let tag = varint(message, &mut at)?;
        let (field, wire) = (tag >> 3, (tag & 7) as u8);
        match wire {
            0 => {
                let value = varint(message, &mut at)?;
                if field == 1 {
                    kind = value;
                }
            }
            1 | 5 => {
                let width = if wire == 1 { 8 } else { 4 };
                at = at
                    .checked_add(width)
                    .filter(|end| *end <= message.len())
                    .ok_or(DecodeError::Truncated)?;
            }
            2 => {
                let length = varint(message, &mut at)?;
                at = usize::try_from(length)
                    .ok()
                    .and_then(|length| at.checked_add(length))
                    .filter(|end| *end <= message.len())
                    .ok_or(DecodeError::Truncated)?;
            }
            other => return Err(DecodeError::WireType(other)),
        }
    }
    Ok(kind)
}

/// The number of STARTED events in a whole gRPC response body: the active builds. Other
/// events (a daemon that ignores ActiveOnly sends its finished builds too) are not counted.
pub fn count_active(body: &[u8]) -> Result<u32, DecodeError> {
    if body.len() > MAX_BODY {
        return Err(DecodeError::TooLarge);
    }
    let mut at = 0;
    let mut active = 0u32;
    while at < body.len() {
        let header = body.get(at..at + 5).ok_or(DecodeError::Truncated)?;
        if header[0] != 0 {
            return Err(DecodeError::Compressed);
        }
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let start = at + 5;
        let message = start
            .checked_add(length)
            .and_then(|end| body.get(start..end))
            .ok_or(DecodeError::Truncated)?;
        if event_type(message)? == 0 {
            active = active.saturating_add(1);
        }
        at = start + length;
    }
    Ok(active)
}

/// Why a daemon gave no load. Every one counts as full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// Connecting or the TLS handshake failed.
    Connect(HandshakeFailure),
    /// No whole answer within the timeout.
    Timeout(Duration),
    /// The HTTP/2 exchange failed.
    Http2(String),
    /// An HTTP status other than 200, or not a gRPC content type.
    NotGrpc(String),
    /// The call ended with a gRPC status other than OK.
    Status {
        /// The gRPC status code.
        code: u32,
        /// `grpc-message`, decoded and capped.
        message: String,
    },
    /// The answer did not decode.
    Decode(DecodeError),
}

fn status_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Cancelled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(code as usize).copied().unwrap_or("unknown")
}

/// `text` with control characters dropped and at most 80 characters kept.
fn capped(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    if clean.chars().count() > 80 {
        format!("{}…", clean.chars().take(80).collect::<String>())
    } else {
        clean
    }
}

/// A `grpc-message` value: percent-encoded UTF-8.
fn decode_grpc_message(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    capped(&String::from_utf8_lossy(&out))
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(failure) => f.write_str(&match failure {
                HandshakeFailure::Resolve(message) => {
                    format!("cannot resolve its name ({})", capped(message))
                }
                HandshakeFailure::Refused => "it refused the connection".into(),
                HandshakeFailure::Timeout(limit) | HandshakeFailure::NoHttp2Answer(limit) => {
                    format!("no answer within {}", millis(*limit))
                }
                HandshakeFailure::UnknownCa => "its certificate is not signed by our CA".into(),
                HandshakeFailure::WrongName => "its certificate is not valid for its name".into(),
                HandshakeFailure::DaemonCertTime => "its certificate is expired or not yet valid".into(),
                HandshakeFailure::ClientRejected(_) => "it rejected our client certificate".into(),
                HandshakeFailure::Other(message) => capped(message),
            }),
            Self::Timeout(limit) => write!(f, "no answer within {}", millis(*limit)),
            Self::Http2(message) => write!(f, "the HTTP/2 exchange failed ({})", capped(message)),
            Self::NotGrpc(what) => write!(f, "it does not speak gRPC ({what})"),
            Self::Status { code: 12, .. } => {
                f.write_str("it has no build-history API (gRPC Unimplemented: buildkitd before v0.11)")
            }
            Self::Status { code, message } => {
                write!(f, "gRPC status {} ({code}): {message}", status_name(*code))
            }
            Self::Decode(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for LoadError {}

fn millis(limit: Duration) -> String {
    if limit.subsec_millis() == 0 {
        format!("{}s", limit.as_secs())
    } else {
        format!("{}ms", limit.as_millis())
    }
}

fn h2_error(error: h2::Error) -> LoadError {
    match error.get_io() {
        Some(io) => LoadError::Http2(io.to_string()),
        None => LoadError::Http2(error.to_string()),
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Result<(), LoadError>> {
    let code = headers.get("grpc-status")?;
    let code: u32 = match code.to_str().ok().and_then(|c| c.trim().parse().ok()) {
        Some(code) => code,
        None => {
            return Some(Err(LoadError::NotGrpc(
                "a grpc-status that is not a number".into(),
            )));
        }
    };
    if code == 0 {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|m| decode_grpc_message(m.as_bytes()))
        .unwrap_or_default();
    Some(Err(LoadError::Status { code, message }))
}

/// The number of builds `daemon` is running, asked over mTLS with `config` (the
/// preflight's), all within `timeout`.
pub async fn active_builds(
    daemon: &Daemon,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<u32, LoadError> {
    match tokio::time::timeout(timeout, ask(daemon, config, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(LoadError::Timeout(timeout)),
    }
}

async fn ask(
    daemon: &Daemon,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<u32, LoadError> {
    let tls = preflight::connect_tls(daemon, config)
        .await
        .map_err(LoadError::Connect)?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .max_header_list_size(64 << 10)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .map_err(h2_error)?;
    let exchange = async move {
        let mut client = client.ready().await.map_err(h2_error)?;
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("https://{}{METHOD}", daemon.name()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .header(
                "grpc-timeout",
                format!("{}m", timeout.as_millis().clamp(1, 99_999_999)),
            )
            .body(())
            .map_err(|e| LoadError::Http2(e.to_string()))?;
        let (response, mut send) = client.send_request(request, false).map_err(h2_error)?;
        send.send_data(bytes::Bytes::from(frame(&request_message())), true)
            .map_err(h2_error)?;
        let response = response.await.map_err(h2_error)?;
        if response.status() != http::StatusCode::OK {
            return Err(LoadError::NotGrpc(format!(
                "HTTP status {}",
                response.status().as_u16()
            )));
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("application/grpc") {
            return Err(LoadError::NotGrpc(format!(
                "content type {:?}",
                capped(content_type)
            )));
        }
        // A "trailers-only" answer: the status comes with the headers and there is no body.
        if let Some(status) = grpc_status(response.headers()) {
            return status.map(|()| 0);
        }
        let mut stream = response.into_body();
        let mut body = Vec::new();
        while let Some(chunk) = stream.data().await {
            let chunk = chunk.map_err(h2_error)?;
            let _ = stream.flow_control().release_capacity(chunk.len());
            if body.len() + chunk.len() > MAX_BODY {
                return Err(LoadError::Decode(DecodeError::TooLarge));
            }
            body.extend_from_slice(&chunk);
        }
        let trailers = stream.trailers().await.map_err(h2_error)?.unwrap_or_default();
        match grpc_status(&trailers) {
            Some(Ok(())) => count_active(&body).map_err(LoadError::Decode),
            Some(Err(error)) => Err(error),
            None => Err(LoadError::NotGrpc(
                "the stream ended without a gRPC status".into(),
            )),
        }
    };
    let mut connection = std::pin::pin!(connection);
    let mut exchange = std::pin::pin!(exchange);
    tokio::select! {
        biased;
        result = &mut exchange => result,
        closed = &mut connection => match closed {
            Err(error) => Err(h2_error(error)),
            Ok(()) => Err(LoadError::Http2("the daemon closed the connection".into())),
        },
    }
}

/// Ask every daemon in `daemons` at once, each within `timeout`; the answers in the same order.
pub async fn ask_all(
    daemons: &[Daemon],
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Vec<Result<u32, LoadError>> {
    let mut set = tokio::task::JoinSet::new();
    for (index, daemon) in daemons.iter().enumerate() {
        let (daemon, config) = (daemon.clone(), config.clone());
        set.spawn(async move { (index, active_builds(&daemon, config, timeout).await) });
    }
    let mut answers: Vec<Result<u32, LoadError>> = vec![Err(LoadError::Timeout(timeout)); daemons.len()];
    while let Some(joined) = set.join_next().await {
        if let Ok((index, answer)) = joined {
            answers[index] = answer;
        }
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BuildHistoryEvent: type (omitted for STARTED, as Go's encoder does) and a record
    /// with a ref, a map entry and a timestamp.
    fn event(kind: u64, reference: &str) -> Vec<u8> {
        let mut record = vec![0x0a, reference.len() as u8];
        record.extend_from_slice(reference.as_bytes());
        // FrontendAttrs (3): map entry {key: "build-arg:X", value: "y"}.
        let entry = [&[0x0a, 11][..], b"build-arg:X", &[0x12, 1, b'y']].concat();
        record.push(0x1a);
        record.push(entry.len() as u8);
        record.extend_from_slice(&entry);
        // CreatedAt (6): {seconds: 1700000000}.
        let stamp = [0x08, 0x80, 0xe2, 0xcf, 0xaa, 0x06];
        record.push(0x32);
        record.push(stamp.len() as u8);
        record.extend_from_slice(&stamp);
        let mut out = Vec::new();
        if kind != 0 {
            out.extend_from_slice(&[0x08, kind as u8]);
        }
        out.push(0x12);
        out.push(record.len() as u8);
        out.extend_from_slice(&record);
        out
    }

    #[test]
    fn request_sets_active_only_and_early_exit() {
        assert_eq!(frame(&request_message()), [0, 0, 0, 0, 4, 0x08, 1, 0x18, 1]);
    }

    #[test]
    fn counts_started_events_only() {
        let frames = [
            frame(&event(0, "abc")),
            frame(&event(1, "done")),
            frame(&event(0, "def")),
            frame(&event(2, "gone")),
            frame(&[]),
        ];
        let body = frames.concat();
        // The empty message is an event with every field default: STARTED.
        assert_eq!(count_active(&body), Ok(3));
        assert_eq!(count_active(&[]), Ok(0));
        // A cut between frames is a shorter stream; anywhere else it is a truncation.
        let boundaries: Vec<usize> = frames
            .iter()
            .scan(0, |end, f| {
                *end += f.len();
                Some(*end)
            })
            .collect();
        for cut in 1..body.len() {
            let short = count_active(&body[..cut]);
            assert_eq!(short.is_ok(), boundaries.contains(&cut), "cut {cut}: {short:?}");
        }
    }

    #[test]
    fn bad_answers_are_errors_not_panics() {
        assert_eq!(count_active(&[1, 0, 0, 0, 0]), Err(DecodeError::Compressed));
        assert_eq!(
            count_active(&[0, 0xff, 0xff, 0xff, 0xff, 1]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            event_type(&[0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::BadVarint)
        );
        assert_eq!(event_type(&[0x0b]), Err(DecodeError::WireType(3)));
        assert_eq!(event_type(&[0x12, 0x05, 1]), Err(DecodeError::Truncated));
        assert_eq!(
            event_type(&[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(event_type(&[0x09, 1, 2]), Err(DecodeError::Truncated));
        assert_eq!(count_active(&vec![0u8; MAX_BODY + 1]), Err(DecodeError::TooLarge));
    }

    #[test]
    fn any_bytes_decode_without_panicking() {
        // A bounded random walk over inputs (xorshift, fixed seed), mutating a valid body.
        let valid = [frame(&event(0, "abc")), frame(&event(1, "x"))].concat();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut input = valid.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % input.len();
                input[at] = next() as u8;
            }
            let cut = (next() as usize) % (input.len() + 1);
            let result = count_active(&input[..cut]);
            if let Ok(count) = result {
                assert!(
                    count as usize <= cut / 5,
                    "every event takes a 5-byte frame header"
                );
            }
            let _ = event_type(&input[..cut]);
        }
    }

    #[test]
    fn status_messages_are_decoded_capped_and_named() {
        assert_eq!(
            decode_grpc_message(b"transport%20is%20closing%0A"),
            "transport is closing"
        );
        assert_eq!(decode_grpc_message(b"100%"), "100%");
        let long = "x".repeat(500);
        assert_eq!(decode_grpc_message(long.as_bytes()).chars().count(), 81);
        let unimplemented = LoadError::Status {
            code: 12,
            message: "unknown method".into(),
        };
        assert!(unimplemented.to_string().contains("before v0.11"));
        let other = LoadError::Status {
            code: 14,
            message: "draining".into(),
        };
        assert_eq!(other.to_string(), "gRPC status Unavailable (14): draining");
        assert_eq!(
            LoadError::Timeout(Duration::from_millis(500)).to_string(),
            "no answer within 500ms"
        );
    }
}
