//! Shared test support: a Kubernetes API server for the in-cluster source,
//! and the API objects its tests build.

pub mod apiserver;
pub mod objects;
