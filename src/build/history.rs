//! What a daemon is building, read from BuildKit's build-history API: the
//! `ListenBuildHistory` call behind `buildctl debug histories`, asked natively over gRPC
//! with the mTLS the preflight uses (docs/build.md has the figures against running
//! buildctl).
//!
//! The request is `BuildHistoryRequest{EarlyExit: true, Limit: 50}`: the daemon sends one
//! `BuildHistoryEvent` per active build (STARTED), then its newest finished builds
//! (COMPLETE, at most [`FINISHED_LIMIT`]; a daemon before v0.20 has no `Limit` and sends
//! all it keeps, in no useful order, of which kiln reads the first 50), and ends the stream. Each record names the
//! images its exporters write, which says how many of those builds are for the repository
//! being built ([`Tally`]). The few protobuf fields involved are encoded and decoded here
//! by hand ([`request_message`], [`Tally`], [`summarize`]: pure, bounded, and total over
//! any input); [`load`] is the network edge.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::choose::Load;
use super::preflight::{self, HandshakeFailure};
use super::{Daemon, ImageRef};

/// The gRPC method: service `moby.buildkit.v1.Control`, server-streaming.
pub const METHOD: &str = "/moby.buildkit.v1.Control/ListenBuildHistory";

/// The largest answer read (all gRPC messages together): build records are a few KiB
/// each, so this is thousands of builds. A bigger answer counts as no answer.
pub const MAX_BODY: usize = 8 << 20;

/// The finished builds asked of each daemon (the request's `Limit`), newest first: BuildKit's
/// default `history.maxEntries`, so a daemon with default settings keeps at least as many.
/// kiln stops reading after that many, also from a daemon older than v0.20 that ignores the
/// limit.
pub const FINISHED_LIMIT: u32 = 50;

/// `BuildHistoryRequest{EarlyExit (3): true, Limit (5): FINISHED_LIMIT}` in protobuf.
/// ActiveOnly (1) stays false, its default, so finished builds come too.
pub fn request_message() -> Vec<u8> {
    let mut out = vec![0x18, 0x01, 0x28];
    put_varint(&mut out, u64::from(FINISHED_LIMIT));
    out
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Protobuf field `field` (below 16) holding `bytes` (wire type 2): how a record's strings,
/// messages and map entries are written. For the stand-in daemons of the tests and
/// benchmarks, which answer what [`Tally`] reads.
pub fn bytes_field(field: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(field << 3) | 2];
    put_varint(&mut out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

/// A `map<string, string>` entry (key 1, value 2) as field `field`.
pub fn map_entry(field: u8, key: &str, value: &str) -> Vec<u8> {
    bytes_field(
        field,
        &[bytes_field(1, key.as_bytes()), bytes_field(2, value.as_bytes())].concat(),
    )
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

/// One protobuf field's value: a number (varint or fixed width) or bytes.
enum Value<'a> {
    Number(u64),
    Bytes(&'a [u8]),
}

/// Call `each` with every field of `message` (field number, value), in order.
fn fields<'a>(
    message: &'a [u8],
    mut each: impl FnMut(u64, Value<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut at = 0;
    while at < message.len() {
        let tag = varint(message, &mut at)?;
        let (field, wire) = (tag >> 3, (tag & 7) as u8);
        let value = match wire {
            0 => Value::Number(varint(message, &mut at)?),
            1 | 5 => {
                let width = if wire == 1 { 8 } else { 4 };
                at = at
                    .checked_add(width)
                    .filter(|end| *end <= message.len())
                    .ok_or(DecodeError::Truncated)?;
                Value::Number(0)
            }
            2 => {
                let length = varint(message, &mut at)?;
                let start = at;
                at = usize::try_from(length)
                    .ok()
                    .and_then(|length| at.checked_add(length))
                    .filter(|end| *end <= message.len())
                    .ok_or(DecodeError::Truncated)?;
                Value::Bytes(&message[start..at])
            }
            other => return Err(DecodeError::WireType(other)),
        };
        each(field, value)?;
    }
    Ok(())
}

/// The `type` (field 1) of one `BuildHistoryEvent`: STARTED is 0 (and absent), COMPLETE 1,
/// DELETED 2; and whether its record (field 2) exports an image of `repository`.
pub fn event(message: &[u8], repository: &str) -> Result<(u64, bool), DecodeError> {
    let (mut kind, mut same) = (0, false);
    fields(message, |field, value| {
        match (field, value) {
            (1, Value::Number(value)) => kind = value,
            (2, Value::Bytes(record)) => same |= exports(record, repository)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok((kind, same))
}

/// Whether a `BuildHistoryRecord` has an exporter (field 4) whose `name` attribute (field 2,
/// a map entry of key 1 and value 2) lists an image of `repository`: image exporters take a
/// comma-separated list of references, each with an optional tag or digest.
fn exports(record: &[u8], repository: &str) -> Result<bool, DecodeError> {
    let mut same = false;
    fields(record, |field, value| {
        let (4, Value::Bytes(exporter)) = (field, value) else {
            return Ok(());
        };
        fields(exporter, |field, value| {
            let (2, Value::Bytes(entry)) = (field, value) else {
                return Ok(());
            };
            let (mut key, mut names): (&[u8], &[u8]) = (&[], &[]);
            fields(entry, |field, value| {
                match (field, value) {
                    (1, Value::Bytes(bytes)) => key = bytes,
                    (2, Value::Bytes(bytes)) => names = bytes,
                    _ => {}
                }
                Ok(())
            })?;
            if key == b"name" {
                same |= String::from_utf8_lossy(names).split(',').any(|name| {
                    ImageRef::parse(name.trim()).is_ok_and(|image| image.repository == repository)
                });
            }
            Ok(())
        })
    })?;
    Ok(same)
}

/// A build-history answer read as it arrives: the events of whole gRPC frames counted into
/// a [`Load`] for one repository.
#[derive(Debug, Clone)]
pub struct Tally {
    repository: String,
    load: Load,
    /// Where the next frame starts in the body.
    at: usize,
}

impl Tally {
    /// A count of builds, and of builds of `repository`.
    pub fn new(repository: &str) -> Self {
        Self {
            repository: repository.to_string(),
            load: Load::default(),
            at: 0,
        }
    }

    /// Read the whole frames of `body` (the answer so far, from its first byte) not read
    /// yet. True once [`FINISHED_LIMIT`] finished builds are counted: the rest is not needed.
    pub fn feed(&mut self, body: &[u8]) -> Result<bool, DecodeError> {
        if body.len() > MAX_BODY {
            return Err(DecodeError::TooLarge);
        }
        while self.load.finished < FINISHED_LIMIT {
            let Some(header) = body.get(self.at..self.at + 5) else {
                return Ok(false);
            };
            if header[0] != 0 {
                return Err(DecodeError::Compressed);
            }
            let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let start = self.at + 5;
            let Some(message) = start.checked_add(length).and_then(|end| body.get(start..end)) else {
                if start.saturating_add(length) > MAX_BODY {
                    return Err(DecodeError::TooLarge);
                }
                return Ok(false);
            };
            let (kind, same) = event(message, &self.repository)?;
            let (count, same_count) = match kind {
                0 => (&mut self.load.active, &mut self.load.active_same),
                1 => (&mut self.load.finished, &mut self.load.finished_same),
                _ => {
                    self.at = start + length;
                    continue;
                }
            };
            *count = count.saturating_add(1);
            if same {
                *same_count = same_count.saturating_add(1);
            }
            self.at = start + length;
        }
        Ok(true)
    }

    /// The counts, once the answer ended after `body`: a frame cut off is an error.
    pub fn finish(mut self, body: &[u8]) -> Result<Load, DecodeError> {
        if !self.feed(body)? && self.at != body.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(self.load)
    }
}

/// The counts of a whole gRPC response body for builds of `repository`.
pub fn summarize(body: &[u8], repository: &str) -> Result<Load, DecodeError> {
    Tally::new(repository).finish(body)
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

/// What `daemon` is building, and how much of it is for `repository`, asked over mTLS with
/// `config` (the preflight's), all within `timeout`.
pub async fn load(
    daemon: &Daemon,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
    repository: &str,
) -> Result<Load, LoadError> {
    match tokio::time::timeout(timeout, ask(daemon, config, timeout, repository)).await {
        Ok(result) => result,
        Err(_) => Err(LoadError::Timeout(timeout)),
    }
}

async fn ask(
    daemon: &Daemon,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
    repository: &str,
) -> Result<Load, LoadError> {
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
            return status.map(|()| Load::default());
        }
        let mut stream = response.into_body();
        let mut body = Vec::new();
        let mut tally = Tally::new(repository);
        while let Some(chunk) = stream.data().await {
            let chunk = chunk.map_err(h2_error)?;
            let _ = stream.flow_control().release_capacity(chunk.len());
            if body.len() + chunk.len() > MAX_BODY {
                return Err(LoadError::Decode(DecodeError::TooLarge));
            }
            body.extend_from_slice(&chunk);
            if tally.feed(&body).map_err(LoadError::Decode)? {
                // Enough finished builds (a daemon that ignores Limit sends them all):
                // dropping the stream cancels it.
                return tally.finish(&body).map_err(LoadError::Decode);
            }
        }
        let trailers = stream.trailers().await.map_err(h2_error)?.unwrap_or_default();
        match grpc_status(&trailers) {
            Some(Ok(())) => tally.finish(&body).map_err(LoadError::Decode),
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

/// Ask every daemon in `daemons` at once, each within `timeout`, what it is building and
/// how much of it is for `repository`; the answers in the same order.
pub async fn ask_all(
    daemons: &[Daemon],
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
    repository: &str,
) -> Vec<Result<Load, LoadError>> {
    let mut set = tokio::task::JoinSet::new();
    for (index, daemon) in daemons.iter().enumerate() {
        let (daemon, config, repository) = (daemon.clone(), config.clone(), repository.to_string());
        set.spawn(async move { (index, load(&daemon, config, timeout, &repository).await) });
    }
    let mut answers: Vec<Result<Load, LoadError>> = vec![Err(LoadError::Timeout(timeout)); daemons.len()];
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

    #[test]
    fn fields_are_encoded_as_protobuf_writes_them() {
        assert_eq!(bytes_field(1, b"ab"), [0x0a, 2, b'a', b'b']);
        // A length of 200 takes two varint bytes: 0xc8 0x01.
        assert_eq!(bytes_field(2, &[0; 200])[..3], [0x12, 0xc8, 0x01]);
        assert_eq!(map_entry(3, "k", "v"), [0x1a, 6, 0x0a, 1, b'k', 0x12, 1, b'v']);
    }

    /// A BuildHistoryEvent: type (omitted for STARTED, as Go's encoder does) and a record
    /// with a ref, a build arg, a timestamp and an image exporter writing `names`.
    fn event_bytes(kind: u64, reference: &str, names: &str) -> Vec<u8> {
        let exporter = [
            bytes_field(1, b"image"),
            map_entry(2, "push", "true"),
            map_entry(2, "name", names),
        ]
        .concat();
        let record = [
            bytes_field(1, reference.as_bytes()),
            map_entry(3, "build-arg:X", "y"),
            bytes_field(4, &exporter),
            // CreatedAt (6): {seconds: 1700000000}.
            bytes_field(6, &[0x08, 0x80, 0xe2, 0xcf, 0xaa, 0x06]),
        ]
        .concat();
        let mut out = Vec::new();
        if kind != 0 {
            out.extend_from_slice(&[0x08, kind as u8]);
        }
        out.extend(bytes_field(2, &record));
        out
    }

    const APP: &str = "registry.example.com/team/app";

    #[test]
    fn request_asks_for_finished_builds_up_to_the_limit_and_early_exit() {
        assert_eq!(frame(&request_message()), [0, 0, 0, 0, 4, 0x18, 1, 0x28, 50]);
    }

    #[test]
    fn counts_builds_and_those_of_the_repository_by_exported_image_name() {
        let frames = [
            frame(&event_bytes(0, "abc", "registry.example.com/team/app:1.0")),
            frame(&event_bytes(
                1,
                "done",
                "registry.example.com/team/app@sha256:0123456789abcdef0123456789abcdef",
            )),
            frame(&event_bytes(0, "def", "registry.example.com/team/other:1")),
            frame(&event_bytes(
                1,
                "both",
                "x.io/mirror/app:2, registry.example.com/team/app",
            )),
            frame(&event_bytes(1, "prefix", "registry.example.com/team/app-2:1")),
            frame(&event_bytes(2, "gone", "registry.example.com/team/app:1")),
            frame(&[]),
        ];
        let body = frames.concat();
        // The empty message is an event with every field default: STARTED, no exporter.
        assert_eq!(
            summarize(&body, APP),
            Ok(Load {
                active: 3,
                active_same: 1,
                finished: 3,
                finished_same: 2
            })
        );
        assert_eq!(summarize(&[], APP), Ok(Load::default()));
        // A cut between frames is a shorter stream; anywhere else it is a truncation.
        let boundaries: Vec<usize> = frames
            .iter()
            .scan(0, |end, f| {
                *end += f.len();
                Some(*end)
            })
            .collect();
        for cut in 1..body.len() {
            let short = summarize(&body[..cut], APP);
            assert_eq!(short.is_ok(), boundaries.contains(&cut), "cut {cut}: {short:?}");
        }
    }

    #[test]
    fn reading_stops_after_the_limit_of_finished_builds() {
        // A daemon older than v0.20 ignores Limit and sends every record it has.
        let mut body = frame(&event_bytes(0, "running", APP));
        for i in 0..FINISHED_LIMIT + 20 {
            body.extend(frame(&event_bytes(
                1,
                &format!("done{i}"),
                "registry.example.com/team/app:1",
            )));
        }
        let mut tally = Tally::new(APP);
        // Fed in pieces, as the stream arrives; done once the limit is reached.
        let mut done_at = None;
        for end in (0..=body.len()).step_by(97).chain([body.len()]) {
            if tally.feed(&body[..end]) == Ok(true) {
                done_at = Some(end);
                break;
            }
        }
        assert!(
            done_at.is_some_and(|end| end < body.len()),
            "should stop before the end: {done_at:?}"
        );
        let load = tally.finish(&body[..done_at.unwrap()]).unwrap();
        assert_eq!(
            (load.active, load.finished, load.finished_same),
            (1, FINISHED_LIMIT, FINISHED_LIMIT)
        );
    }

    #[test]
    fn bad_answers_are_errors_not_panics() {
        assert_eq!(summarize(&[1, 0, 0, 0, 0], APP), Err(DecodeError::Compressed));
        // A frame longer than the largest answer read is refused before it arrives.
        assert_eq!(
            summarize(&[0, 0xff, 0xff, 0xff, 0xff, 1], APP),
            Err(DecodeError::TooLarge)
        );
        assert_eq!(summarize(&[0, 0, 0, 0, 9, 1], APP), Err(DecodeError::Truncated));
        assert_eq!(
            event(
                &[0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80],
                APP
            ),
            Err(DecodeError::BadVarint)
        );
        assert_eq!(event(&[0x0b], APP), Err(DecodeError::WireType(3)));
        assert_eq!(event(&[0x12, 0x05, 1], APP), Err(DecodeError::Truncated));
        assert_eq!(
            event(&[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], APP),
            Err(DecodeError::Truncated)
        );
        assert_eq!(event(&[0x09, 1, 2], APP), Err(DecodeError::Truncated));
        // A record whose exporter is cut short inside.
        assert_eq!(
            event(&bytes_field(2, &[0x22, 0x03, 0x12, 0x05]), APP),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            summarize(&vec![0u8; MAX_BODY + 1], APP),
            Err(DecodeError::TooLarge)
        );
    }

    #[test]
    fn any_bytes_decode_without_panicking() {
        // A bounded random walk over inputs (xorshift, fixed seed), mutating a valid body.
        let valid = [
            frame(&event_bytes(0, "abc", "registry.example.com/team/app:1")),
            frame(&event_bytes(1, "x", "a/b,registry.example.com/team/app")),
        ]
        .concat();
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
            if let Ok(load) = summarize(&input[..cut], APP) {
                assert!(
                    load.reported() as usize <= cut / 5,
                    "every event takes a 5-byte frame header"
                );
                assert!(load.active_same <= load.active && load.finished_same <= load.finished);
            }
            let _ = event(&input[..cut], APP);
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
