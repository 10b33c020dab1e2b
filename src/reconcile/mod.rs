//! Placeholder: filled by the reconcile work.
