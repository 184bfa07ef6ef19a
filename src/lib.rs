//! kiln: a Moby BuildKit build farm on Kubernetes, the GitOps way.
//!
//! The crate is split by capability; IO lives at the edges (`cli`, `output`,
//! `rotate::executor`, `build::run`), the rest is pure.

pub mod build;
pub mod cli;
pub mod duration;
pub mod krm;
pub mod output;
pub mod overlay;
pub mod pki;
pub mod render;
pub mod rotate;
pub mod schedule;
pub mod yaml;

/// The kiln version, as stamped into `kiln.dev/generated-by`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
