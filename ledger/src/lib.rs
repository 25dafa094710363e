//! Baton ledger: the durable, verifiable record of everything the market did.
//!
//! Entries (participants, signed orders and cancellations, interval inputs and results,
//! settlements, corrections, notes) are appended in batches; each batch is one database
//! transaction that ends with an operator-signed checkpoint over an RFC 9162 Merkle tree of
//! the hash-chained entries. A regulator verifies the whole ledger offline with
//! [`audit::verify`] given only the database and the operator's public key.
//! See `ledger/DESIGN.md` for formats and guarantees.
//!
//! ```no_run
//! use baton_ledger::{audit, Amount, Ledger, NewEntry, OperatorKey, Posting, SettlementBody};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let key = OperatorKey::load(std::path::Path::new("/etc/baton/operator.key"))?;
//! let public = key.public_key();
//! let ledger = Ledger::open("sqlite:///var/lib/baton/ledger.db")
//!     .await?
//!     .with_operator(key, "baton.example.org/ledger")?;
//! // One interval: its result and all its payments in one transaction + checkpoint.
//! let pay = |account: &str, minor| Posting {
//!     account: account.into(),
//!     amount: Amount::from_minor(minor),
//!     memo: None,
//! };
//! let receipt = ledger
//!     .append(vec![
//!         NewEntry::new(baton_ledger::EntryKind::IntervalResult, Some(1_700_000_100), b"...".to_vec()),
//!         NewEntry::settlement(&SettlementBody {
//!             interval_start: 1_700_000_100,
//!             postings: vec![pay("participant:p1", 1250), pay("participant:p2", -1250)],
//!         }),
//!     ])
//!     .await?;
//! println!("{}", receipt.checkpoint.to_note());
//! // A regulator, later, with only the database and the public key:
//! let report = audit::verify("sqlite:///var/lib/baton/ledger.db", &public, None).await?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```
//!
//! **Architecture Invariant:** the ledger does not depend on the clearing engine; entry bodies
//! are bytes, except the kinds whose schema the ledger owns ([`body`]).
//!
//! **Architecture Invariant:** there is no update or delete anywhere in the API; corrections
//! are new entries.

pub mod audit;
pub mod body;
pub mod checkpoint;
pub mod cluster;
pub mod entry;
mod error;
mod hexser;
pub mod key;
mod ledger;
pub mod merkle;
mod store;

pub use body::{
    readings_digest, signed_book_digest, Amount, BookSource, CorrectionBody,
    DeliverySettlementBody, GateClosedBody, MeterBody, MeterReadingBody, ParticipantBody,
    ParticipantStatus, Posting, SettlementBody, SignedMessageBody, AMOUNT_SCALE,
};
pub use checkpoint::Checkpoint;
pub use entry::{Entry, EntryKind, Hash, NewEntry};
pub use error::{LedgerError, Result};
pub use key::{OperatorKey, PublicKey};
pub use ledger::{AppendReceipt, Head, Ledger, ENTRIES_PER_READ_MAX};
