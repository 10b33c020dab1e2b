//! Placeholder: an in-memory kernel for tests.
