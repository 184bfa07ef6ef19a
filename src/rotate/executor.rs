//! The Kubernetes executor.
