//! Placeholder: filled by the translate work.
