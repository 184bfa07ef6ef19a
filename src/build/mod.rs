//! `kiln build`: the Tekton step that drives buildkitd over mTLS.
//!
//! The pure parts live here and in [`choose`]: reading image references, build args,
//! platforms and daemon addresses, the daemon order for a key, the spread of busy
//! repositories and the bounded-load choice, and turning buildctl's metadata file into
//! Tekton results
//! ([`resolve_dockerfile`] alone looks at the file system). [`preflight`] checks the
//! client certificates (pure) and shakes hands with the daemon (network edge);
//! [`history`] asks daemons what they are building and have built (network edge, with a
//! pure protobuf codec); [`buildctl`] builds the command line (pure) and runs it (process
//! edge); [`run`] is the whole flow of one build, with its retries.

pub mod buildctl;
pub mod choose;
pub mod history;
pub mod preflight;
pub mod run;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

/// The most StatefulSet replicas `kiln build` hashes over: the same limit `kiln render`
/// holds `buildkit.replicas` to.
pub const MAX_REPLICAS: u32 = crate::overlay::MAX_REPLICAS;

/// Why a build input or output could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// `--image` is not a valid image reference.
    #[error("invalid image reference {value:?}: {reason}; write it as registry.example.com/team/app:tag")]
    InvalidImage { value: String, reason: &'static str },
    /// A build arg is not `KEY=VALUE`.
    #[error("invalid build arg {value:?}: {reason}; write it as KEY=VALUE")]
    InvalidBuildArg { value: String, reason: &'static str },
    /// A platform is not `os/arch[/variant]`.
    #[error(
        "invalid platform {value:?}: write it as os/arch or os/arch/variant, such as linux/amd64 or linux/arm/v7"
    )]
    InvalidPlatform { value: String },
    /// `--addr` is not `tcp://host:port`.
    #[error("invalid daemon address {value:?}: {reason}; write it as tcp://buildkitd.buildkit.svc:1234")]
    InvalidAddr { value: String, reason: &'static str },
    /// `--replicas`, `--service`, `--namespace` or `--port` cannot name a StatefulSet's pods.
    #[error("invalid --{flag} {value:?}: {reason}")]
    InvalidReplicas {
        flag: &'static str,
        value: String,
        reason: String,
    },
    /// A `--connect-to` override is not `HOST:PORT=IP:PORT`.
    #[error(
        "invalid --connect-to {value:?}: write it as HOST:PORT=IP:PORT, such as buildkitd-0.buildkitd.buildkit.svc:1234=127.0.0.1:41234"
    )]
    InvalidConnectTo { value: String },
    /// The metadata file is not JSON.
    #[error("failed to read buildctl metadata file {path}: {message}")]
    Metadata { path: String, message: String },
    /// A pushed image has no digest in the metadata file.
    #[error(
        "buildctl metadata file {path} has no containerimage.digest although the image was pushed: the build did not export an image; check the buildctl output above"
    )]
    MissingDigest { path: String },
    /// `--context` is not a directory.
    #[error(
        "build context {path} is not a directory: check --context (the CONTEXT param, relative to the source workspace)"
    )]
    NoContext { path: PathBuf },
    /// No `--dockerfile` and no `Dockerfile` in the context.
    #[error("no Dockerfile at {path}: add one to the context or pass --dockerfile (the DOCKERFILE param)")]
    NoDockerfile { path: PathBuf },
    /// An absolute `--dockerfile` that does not exist.
    #[error("Dockerfile {path} does not exist: check --dockerfile (the DOCKERFILE param)")]
    MissingDockerfile { path: PathBuf },
    /// A relative `--dockerfile` found neither in the context nor in the working directory.
    #[error(
        "Dockerfile {given} does not exist in the context ({in_context}) or the working directory: check --dockerfile (the DOCKERFILE param)"
    )]
    DockerfileNotFound { given: PathBuf, in_context: PathBuf },
}

/// An image reference such as `registry.example.com/team/app:1.0@sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The reference as written.
    pub full: String,
    /// The repository: the reference without tag or digest (`registry.example.com/team/app`).
    pub repository: String,
}

fn is_path_component(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn is_domain(text: &str) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    host_ok && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl ImageRef {
    /// Read and check an image reference (docker's grammar, without normalizing
    /// `docker.io/library/`).
    pub fn parse(value: &str) -> Result<Self, BuildError> {
        let invalid = |reason| BuildError::InvalidImage {
            value: value.to_string(),
            reason,
        };
        if value.is_empty() {
            return Err(invalid("it is empty"));
        }
        if value.len() > 1024 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("it contains whitespace or is too long"));
        }
        let (name_and_tag, digest) = match value.split_once('@') {
            Some((left, digest)) => (left, Some(digest)),
            None => (value, None),
        };
        if let Some(digest) = digest {
            let Some((algorithm, hex)) = digest.split_once(':') else {
                return Err(invalid("the digest must be algorithm:hex, such as sha256:…"));
            };
            let algorithm_ok = !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
            if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid("the digest must be algorithm:hex, such as sha256:…"));
            }
        }
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(colon) => (
                &name_and_tag[..last_slash + colon],
                Some(&name_and_tag[last_slash + colon + 1..]),
            ),
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !tag.starts_with(['.', '-']);
            if !ok {
                return Err(invalid(
                    "the tag must be letters, digits, '_', '.' or '-', at most 128",
                ));
            }
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
            if !is_domain(parts[0]) {
                return Err(invalid("the registry must be a host name with an optional :port"));
            }
            parts.remove(0);
        }
        if !parts.iter().all(|part| is_path_component(part)) {
            return Err(invalid(
                "repository path components must be lowercase letters, digits and '.', '_' or '-' inside",
            ));
        }
        Ok(Self {
            full: value.to_string(),
            repository: name.to_string(),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Read a `KEY=VALUE` build arg. The value may be empty and may contain `=`.
pub fn parse_build_arg(value: &str) -> Result<(String, String), BuildError> {
    let invalid = |reason| BuildError::InvalidBuildArg {
        value: value.to_string(),
        reason,
    };
    let Some((key, val)) = value.split_once('=') else {
        return Err(invalid("it has no '='"));
    };
    if key.is_empty() {
        return Err(invalid("the key is empty"));
    }
    if key
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err(invalid("the key contains whitespace or ','"));
    }
    Ok((key.to_string(), val.to_string()))
}

/// Split `--platform` values on commas, drop empty entries and check each one.
/// Duplicates are kept once, in first-seen order.
pub fn parse_platforms<S: AsRef<str>>(values: &[S]) -> Result<Vec<String>, BuildError> {
    let mut platforms: Vec<String> = Vec::new();
    for item in values.iter().flat_map(|v| v.as_ref().split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let parts: Vec<&str> = item.split('/').collect();
        let ok = (2..=3).contains(&parts.len())
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            });
        if !ok {
            return Err(BuildError::InvalidPlatform {
                value: item.to_string(),
            });
        }
        if !platforms.iter().any(|p| p == item) {
            platforms.push(item.to_string());
        }
    }
    Ok(platforms)
}

/// One buildkitd to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// The host name the daemon's certificate must be valid for.
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// Where to connect instead of resolving `host` (from `--connect-to`).
    pub connect_to: Option<SocketAddr>,
}

impl Daemon {
    /// `host:port`, as shown in logs and messages.
    pub fn name(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The `--addr` for buildctl: the `--connect-to` address when set, else the host.
    pub fn buildctl_addr(&self) -> String {
        match self.connect_to {
            Some(addr) => format!("tcp://{addr}"),
            None => format!("tcp://{}", self.name()),
        }
    }
}

/// Read `tcp://host:port` (the port defaults to 1234, buildkitd's).
pub fn parse_addr(value: &str) -> Result<Daemon, BuildError> {
    let invalid = |reason| BuildError::InvalidAddr {
        value: value.to_string(),
        reason,
    };
    let Some(rest) = value.strip_prefix("tcp://") else {
        return Err(invalid("kiln build talks mTLS over tcp:// only"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') {
        return Err(invalid("it has a path or user part"));
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((host, tail)) = bracketed.split_once(']') else {
            return Err(invalid("an IPv6 address needs a closing ']'"));
        };
        (host, tail.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("the host is empty"));
    }
    let port = match port {
        None => 1234,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("the port must be 1-65535"))?,
    };
    Ok(Daemon {
        host: host.to_string(),
        port,
        connect_to: None,
    })
}

/// Read a `--connect-to HOST:PORT=IP:PORT` override.
pub fn parse_connect_to(value: &str) -> Result<((String, u16), SocketAddr), BuildError> {
    let invalid = || BuildError::InvalidConnectTo {
        value: value.to_string(),
    };
    let (name, addr) = value.split_once('=').ok_or_else(invalid)?;
    let (host, port) = name.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let addr: SocketAddr = addr.parse().map_err(|_| invalid())?;
    if host.is_empty() {
        return Err(invalid());
    }
    Ok(((host.trim_matches(['[', ']']).to_string(), port), addr))
}

/// Where the daemons are: one address, or the replicas of a StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// `--addr`: exactly this daemon.
    Addr(Daemon),
    /// `--replicas N --service S --namespace NS --port P`: pods `S-<i>` behind the
    /// headless Service `S`, reached as `S-<i>.S.NS.svc:P`; one replica means the
    /// Service itself, `S.NS.svc:P`.
    Replicas {
        /// The number of replicas (at least 1).
        replicas: u32,
        /// The (headless) Service name, also the StatefulSet and pod name prefix.
        service: String,
        /// The daemon's namespace.
        namespace: String,
        /// The daemon port.
        port: u16,
    },
}

impl Placement {
    /// The StatefulSet layout, checked: 1 to [`MAX_REPLICAS`] replicas, DNS-1123 label
    /// names, a port other than 0.
    pub fn replicas(
        replicas: u32,
        service: String,
        namespace: String,
        port: u16,
    ) -> Result<Self, BuildError> {
        let invalid =
            |flag, value: String, reason: String| BuildError::InvalidReplicas { flag, value, reason };
        if replicas == 0 {
            return Err(invalid(
                "replicas",
                "0".into(),
                "there must be at least one buildkitd".into(),
            ));
        }
        if replicas > MAX_REPLICAS {
            return Err(invalid(
                "replicas",
                replicas.to_string(),
                format!(
                    "kiln build spreads builds over at most {MAX_REPLICAS} replicas, as kiln render allows"
                ),
            ));
        }
        for (flag, value) in [("service", &service), ("namespace", &namespace)] {
            if !crate::names::is_dns1123_label(value) {
                return Err(invalid(flag, value.clone(), crate::names::LABEL_RULE.to_string()));
            }
        }
        if port == 0 {
            return Err(invalid(
                "port",
                "0".into(),
                "use buildkitd's port, 1234 by default".into(),
            ));
        }
        Ok(Self::Replicas {
            replicas,
            service,
            namespace,
            port,
        })
    }
}

/// The daemons to try, in order: the home of `affinity_key` first, then the rest in the
/// key's order ([`choose::replica_order`]). `overrides` maps `(host, port)` to the
/// address to connect to.
pub fn daemon_candidates(
    placement: &Placement,
    affinity_key: &str,
    overrides: &[((String, u16), SocketAddr)],
) -> Vec<Daemon> {
    let daemons: Vec<Daemon> = match placement {
        Placement::Addr(daemon) => vec![daemon.clone()],
        Placement::Replicas {
            replicas,
            service,
            namespace,
            port,
        } if *replicas <= 1 => vec![Daemon {
            host: format!("{service}.{namespace}.svc"),
            port: *port,
            connect_to: None,
        }],
        Placement::Replicas {
            replicas,
            service,
            namespace,
            port,
        } => choose::replica_order(service, *replicas, affinity_key)
            .into_iter()
            .map(|i| Daemon {
                host: format!("{service}-{i}.{service}.{namespace}.svc"),
                port: *port,
                connect_to: None,
            })
            .collect(),
    };
    daemons
        .into_iter()
        .map(|mut daemon| {
            if daemon.connect_to.is_none() {
                daemon.connect_to = overrides
                    .iter()
                    .find(|((host, port), _)| *host == daemon.host && *port == daemon.port)
                    .map(|(_, addr)| *addr);
            }
            daemon
        })
        .collect()
}

/// A path with `.` components and trailing slashes removed and `..` folded where
/// possible, without touching the file system, so `/ws/src/.` and `/ws/src/` hash alike.
pub fn normalize_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let can_pop = matches!(out.components().next_back(), Some(Component::Normal(_)));
                if can_pop {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The Dockerfile to build from `context` (a directory, checked): `dockerfile` if given,
/// relative paths looked up in the context first, then in the working directory; else
/// `<context>/Dockerfile`. Reads the file system.
pub fn resolve_dockerfile(context: &Path, dockerfile: Option<&Path>) -> Result<PathBuf, BuildError> {
    if !context.is_dir() {
        return Err(BuildError::NoContext {
            path: context.to_path_buf(),
        });
    }
    let Some(given) = dockerfile else {
        let default = context.join("Dockerfile");
        if default.is_file() {
            return Ok(default);
        }
        return Err(BuildError::NoDockerfile { path: default });
    };
    if given.is_absolute() {
        if given.is_file() {
            return Ok(given.to_path_buf());
        }
        return Err(BuildError::MissingDockerfile {
            path: given.to_path_buf(),
        });
    }
    let in_context = normalize_path(&context.join(given));
    if in_context.is_file() {
        return Ok(in_context);
    }
    if given.is_file() {
        return Ok(given.to_path_buf());
    }
    Err(BuildError::DockerfileNotFound {
        given: given.to_path_buf(),
        in_context,
    })
}

/// The Tekton results of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Results {
    /// `IMAGE_URL`: the image name as given to `--image`.
    pub image_url: String,
    /// `IMAGE_DIGEST`: `sha256:…`, when buildctl reported one.
    pub image_digest: Option<String>,
}

/// Read buildctl's `--metadata-file` JSON into [`Results`]. A pushed image without
/// `containerimage.digest` is an error; an unpushed one just has no digest.
pub fn results_from_metadata(
    image: &ImageRef,
    push: bool,
    metadata_path: &str,
    metadata: &str,
) -> Result<Results, BuildError> {
    let value: serde_json::Value = serde_json::from_str(metadata).map_err(|e| BuildError::Metadata {
        path: metadata_path.to_string(),
        message: e.to_string(),
    })?;
    let digest = value
        .get("containerimage.digest")
        .and_then(|d| d.as_str())
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    if digest.is_none() && push {
        return Err(BuildError::MissingDigest {
            path: metadata_path.to_string(),
        });
    }
    Ok(Results {
        image_url: image.full.clone(),
        image_digest: digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_repository_drops_tag_and_digest() {
        let cases = [
            ("app", "app"),
            ("app:1.0", "app"),
            (
                "registry.example.com/team/app:1.0",
                "registry.example.com/team/app",
            ),
            ("localhost:5000/app:dev", "localhost:5000/app"),
            ("registry:5000/team/app", "registry:5000/team/app"),
            (
                "ghcr.io/org/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "ghcr.io/org/app",
            ),
            (
                "ghcr.io/org/app:v2@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "ghcr.io/org/app",
            ),
        ];
        for (input, repository) in cases {
            let image = ImageRef::parse(input).unwrap();
            assert_eq!(image.repository, repository, "{input}");
            assert_eq!(image.full, input);
        }
    }

    #[test]
    fn bad_images_are_rejected() {
        for bad in [
            "",
            "App:1",
            "app:",
            "app:-x",
            "a b",
            "registry.example.com/",
            "reg_istry.example.com/app",
            "app@sha256:xyz",
            "app@sha256",
            "/app",
            "team//app",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn build_args() {
        assert_eq!(parse_build_arg("A=b").unwrap(), ("A".into(), "b".into()));
        assert_eq!(parse_build_arg("A=").unwrap(), ("A".into(), String::new()));
        assert_eq!(parse_build_arg("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        for bad in ["A", "=b", "A B=c", ""] {
            assert!(parse_build_arg(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn platforms_split_dedupe_and_skip_empty() {
        let got = parse_platforms(&["linux/amd64,linux/arm64", "", "linux/arm/v7", "linux/amd64"]).unwrap();
        assert_eq!(got, ["linux/amd64", "linux/arm64", "linux/arm/v7"]);
        assert!(parse_platforms(&[""]).unwrap().is_empty());
        for bad in ["linux", "linux/", "Linux/amd64", "linux/amd64/v1/x"] {
            assert!(parse_platforms(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses() {
        let d = parse_addr("tcp://buildkitd:1234").unwrap();
        assert_eq!((d.host.as_str(), d.port), ("buildkitd", 1234));
        assert_eq!(parse_addr("tcp://buildkitd.ns.svc").unwrap().port, 1234);
        let v6 = parse_addr("tcp://[::1]:99").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.name()),
            ("::1", 99, "[::1]:99".to_string())
        );
        for bad in [
            "buildkitd:1234",
            "unix:///run/buildkit.sock",
            "tcp://:1234",
            "tcp://h:0",
            "tcp://h:x",
            "tcp://h/p",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn candidates_for_replicas_follow_the_keys_order() {
        let placement = Placement::Replicas {
            replicas: 4,
            service: "buildkitd".into(),
            namespace: "ci".into(),
            port: 1234,
        };
        let override_addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let overrides = vec![(("buildkitd-2.buildkitd.ci.svc".to_string(), 1234), override_addr)];
        let key = "registry.example.com/app:/workspace/source";
        let daemons = daemon_candidates(&placement, key, &overrides);
        let expected: Vec<String> = choose::replica_order("buildkitd", 4, key)
            .into_iter()
            .map(|i| format!("buildkitd-{i}.buildkitd.ci.svc"))
            .collect();
        let hosts: Vec<String> = daemons.iter().map(|d| d.host.clone()).collect();
        assert_eq!(hosts, expected);
        for daemon in &daemons {
            let expect = (daemon.host == "buildkitd-2.buildkitd.ci.svc").then_some(override_addr);
            assert_eq!(daemon.connect_to, expect);
        }
        let single = Placement::Replicas {
            replicas: 1,
            service: "buildkitd".into(),
            namespace: "ci".into(),
            port: 1234,
        };
        let one = daemon_candidates(&single, key, &[]);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].buildctl_addr(), "tcp://buildkitd.ci.svc:1234");
    }

    #[test]
    fn normalizes_context_paths() {
        assert_eq!(normalize_path(Path::new("/ws/src/.")), PathBuf::from("/ws/src"));
        assert_eq!(normalize_path(Path::new("/ws/src/")), PathBuf::from("/ws/src"));
        assert_eq!(
            normalize_path(Path::new("/ws/src/./a/../b")),
            PathBuf::from("/ws/src/b")
        );
        assert_eq!(normalize_path(Path::new(".")), PathBuf::from("."));
        assert_eq!(normalize_path(Path::new("../x")), PathBuf::from("../x"));
    }

    #[test]
    fn metadata_to_results() {
        let image = ImageRef::parse("registry.example.com/app:1").unwrap();
        let json = r#"{"containerimage.digest":"sha256:abc","image.name":"registry.example.com/app:1"}"#;
        let results = results_from_metadata(&image, true, "m.json", json).unwrap();
        assert_eq!(results.image_digest.as_deref(), Some("sha256:abc"));
        assert_eq!(results.image_url, "registry.example.com/app:1");
        assert!(matches!(
            results_from_metadata(&image, true, "m.json", "{}"),
            Err(BuildError::MissingDigest { .. })
        ));
        assert_eq!(
            results_from_metadata(&image, false, "m.json", "{}")
                .unwrap()
                .image_digest,
            None
        );
        assert!(matches!(
            results_from_metadata(&image, true, "m.json", "not json"),
            Err(BuildError::Metadata { .. })
        ));
    }
}
