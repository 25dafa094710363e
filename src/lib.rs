//! The `baton` application: what the binary's commands share — how a cleared interval is
//! recorded in the ledger and how a regulator re-clears it.
//!
//! **Architecture Invariant:** an interval is recorded by [`record::interval_entries`] and
//! checked by [`record::reclear`], whoever cleared it (the one-shot `baton clear --ledger` or
//! the live market), so one re-clear checks both.

pub mod record;
pub mod report;
pub mod server;
