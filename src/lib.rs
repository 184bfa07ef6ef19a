//! kiln: a Moby BuildKit build farm on Kubernetes, the GitOps way.
//!
//! The crate is split by concern, and most of it is pure: values in, values out, the clock
//! passed in. IO is confined to the places named below.
//!
//! | module | pure or IO | what it holds |
//! |---|---|---|
//! | [`cli`] | IO | clap definitions, one module per command: parse flags, call the core, print; the only place with `anyhow` |
//! | [`output`] | IO at the edge | laying objects out as files and one YAML stream (pure; every file name through [`output::path::FilePath`]); [`output::write`], [`output::check`] and [`output::replace_dir`], the one atomic directory writer (render's tree, `certs generate`) |
//! | [`krm`] | pure | the KRM function and legacy Kustomize plugin protocol; the render is handed in |
//! | [`render`] | pure | overlay → Kubernetes objects: the daemon, its Services, the Secret shells, the Namespace, the `kiln-config` ConfigMap, rotation RBAC and jobs, the Tasks, GitOps wrappers |
//! | [`rotate`] | pure, but [`rotate::executor`] | state from Secret annotations, the planner and its applier over a `Cluster` trait; the executor talks to the Kubernetes API |
//! | [`build`] | pure, but preflight, history, buildctl and run | image refs, build args, the daemon choice ([`build::choose`]: rendezvous order, the spread of busy repositories and the bounded-load walk); [`build::preflight`] reads the mounted certificates and shakes hands over the network, [`build::history`] asks daemons what they are building and have built (their build history) over gRPC, [`build::buildctl`] runs buildctl and writes the Tekton results, [`build::run`] is one build's flow with its retries, [`build::resolve_dockerfile`] looks at the file system |
//! | [`overlay`] | pure, but loading | the typed overlay model and its validation; [`overlay::load`] (and its siblings) read the overlay files |
//! | [`pki`] | pure, but inspect | issue the CA and leaves, read them back, verify chains, lay out `certs generate`'s files; [`pki::inspect::inspect`] reads the certificates it is pointed at |
//! | [`schedule`] | pure | the cron schedule grammar of `rotation.schedule`, and the longest gap between two runs (the rotation timing checks) |
//! | [`yaml`] | pure | all YAML reading and writing |
//! | [`names`] | pure | DNS-1123 and label name rules |
//! | [`duration`] | pure | human durations (`90d`, `5y`) |
//! | [`object`] | pure | [`object::Object`], one Kubernetes object as a JSON value |
//! | [`template`] | pure | kiln's template language: variables in overlay values; `if`/`unless`/`each`/`with` in extra manifests; bounded, never recursive on input |
//! | [`echo`] | pure | how input appears in errors: one line, capped at 80 characters, never a line of a private key |
//!
//! Imports run one way, down these layers (`tests/layers.rs` fails on any that does not):
//!
//! ```text
//! cli
//!  └─ output, krm
//!      └─ render, rotate, build
//!          └─ overlay
//!              └─ pki, schedule
//!                  └─ yaml, names, duration, object, template
//!                      └─ echo
//! ```
//!
//! A module may use any module below its own layer, never one beside or above it.

pub mod build;
pub mod cli;
pub mod duration;
pub mod echo;
pub mod krm;
pub mod names;
pub mod object;
pub mod output;
pub mod overlay;
pub mod pki;
pub mod render;
pub mod rotate;
pub mod schedule;
pub mod template;
pub mod yaml;

/// The kiln version, as stamped into `kiln.dev/generated-by`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
