//! Placeholder: filled by the model work.
