//! Shared test support: a Kubernetes API server for the in-cluster source,
//! a TLS front for it, and the API objects its tests build.

pub mod apiserver;
pub mod objects;
pub mod tls;
