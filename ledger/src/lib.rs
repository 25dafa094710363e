//! Baton ledger.
