//! Shared helpers for the Baton benchmark harnesses (the harnesses live in `[[bench]]` targets).
