//! Shared test support: a Kubernetes API server for the in-cluster source.

pub mod apiserver;
