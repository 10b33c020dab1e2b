//! kube-ipvs-proxy: Kubernetes Services programmed into the kernel's IPVS.
//!
//! The layers, top to bottom: `source` (API watchers or a manifests
//! directory) feeds `model` (compact, keyed by service), `translate` turns the
//! model into `desired` state (pure), `reconcile` diffs it against a mirror of
//! the kernel, and `kernel` applies the difference. `events` tells the
//! API about the services that cannot be programmed as asked.

pub mod cli;
pub mod config;
pub mod desired;
pub mod events;
pub mod healthcheck;
pub mod heap;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod parallel;
pub mod plan;
pub mod proxy;
pub mod reconcile;
pub mod source;
pub mod translate;
