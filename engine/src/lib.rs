//! Baton clearing core.
