//! The in-cluster source: watchers on the API server.
