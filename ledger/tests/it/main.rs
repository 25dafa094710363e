//! Integration tests for baton-ledger. Every scenario runs on SQLite (a temp file) and, when
//! `BATON_TEST_POSTGRES_URL` is set, on PostgreSQL in a fresh schema.

mod common;

mod append;
mod cluster;
mod concurrency;
mod crash;
mod proofs;
mod tamper;
