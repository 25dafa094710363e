//! Signed receipts (Certificate-Transparency style): the operator's signed promise that an
//! accepted order is in the ledger at a given seq, for a given interval, since a given time.
//!
//! Signing one ed25519 signature per order would cost intake more than its per-order budget,
//! so the server signs once per group-commit batch:
//!
//! - **Leaf** (one per accepted order of the batch): [`ReceiptLeaf`], the SHA-256 of the exact
//!   signed order bytes (`SignedOrder.order`), the ledger seq, the interval start and the
//!   server's wall-clock time of acceptance (unix ms). Its digest is
//!   `SHA-256("baton receipt leaf v1\0" ‖ order_hash ‖ seq u64 BE ‖ interval i64 BE ‖
//!   accepted_at_ms i64 BE)`.
//! - **Tree**: an RFC 9162 Merkle tree over the leaf digests in batch order (`leaf =
//!   SHA-256(0x00 ‖ digest)`, `node = SHA-256(0x01 ‖ left ‖ right)`), the same construction as
//!   the ledger's tree over entry hashes.
//! - **Statement** ([`BatchStatement`]): the operator signs (ed25519, `verify_strict`) exactly
//!   `baton receipt v1\n<origin>\n<leaf count>\n<base64(root)>\n`. The first line keeps it apart
//!   from a ledger checkpoint (`<origin>\n<size>\n<base64 root>\n`): a checkpoint has three
//!   lines and a receipt four, and a receipt's third line is decimal where a checkpoint's is
//!   base64 ending in `=`.
//! - **Receipt** ([`Receipt`]): the leaf, its index, its audit path and the statement.
//!
//! What a valid receipt proves: the holder of the operator key stated that the order with this
//! hash was accepted, durable at `ledger_seq`, for `interval_start`. If the ledger the operator
//! later publishes (and signs checkpoints over) holds something else at that seq, or its
//! interval result leaves the order out, the receipt and the ledger's signed checkpoint are
//! two contradicting signed statements — see [`judge_order_entry`] and [`Scan`].
//! What stays trusted: `accepted_at_ms` is the server's wall clock and is in no ledger entry;
//! the receipt says nothing about whether the order was priced fairly.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message as _;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::v1 as pb;

/// A SHA-256 digest.
pub type Hash = [u8; 32];
/// The first 4 bytes of SHA-256 of the operator's 32-byte public key (as in checkpoints).
pub type KeyId = [u8; 4];

/// First line of every signed receipt statement.
pub const STATEMENT_HEADER: &str = "baton receipt v1";
/// Prefix of every leaf digest's input.
pub const LEAF_DOMAIN: &[u8] = b"baton receipt leaf v1\0";
/// Longest origin line, bytes (as for checkpoints).
pub const ORIGIN_BYTES_MAX: usize = 256;
/// Deepest audit path: a tree of `u64` leaves has at most 64 levels.
pub const PATH_HASHES_MAX: usize = 64;
/// Orders of one `SubmitOrders` stream whose outcomes carry receipts. A receipt is about 600
/// bytes on the wire, so this keeps the one response within gRPC's default 4 MiB message
/// limit that clients decode with; a larger stream is answered without receipts, exactly as
/// before receipts existed. `SubmitOrderStream` and `SubmitOrder` always carry them.
pub const SUBMIT_ORDERS_RECEIPTS_MAX: usize = 4_096;
/// Bytes of a leaf's canonical encoding: hash, seq, interval, time.
pub const LEAF_BYTES: usize = 32 + 8 + 8 + 8;

/// Why a receipt does not verify, or a wire receipt does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// A field has the wrong length or shape.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// The key id does not name the key we verify with.
    #[error("receipt key id {found} does not match the operator key id {expected}")]
    WrongKey {
        /// Hex of the verifying key's id.
        expected: String,
        /// Hex of the receipt's key id.
        found: String,
    },
    /// The statement's signature does not verify (`verify_strict`).
    #[error("the receipt's statement signature does not verify with the operator key")]
    BadSignature,
    /// The leaf and path do not lead to the signed root.
    #[error("the receipt's audit path does not lead to the signed root")]
    BadPath,
}

/// What one receipt's leaf commits to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReceiptLeaf {
    /// SHA-256 of the exact signed order bytes (`SignedOrder.order`).
    #[serde(with = "hex_array")]
    pub order_hash: Hash,
    /// The ledger entry holding the order; 0 in a receipt from a node of several, which
    /// acknowledges an order once it is durable in the shared intake, before the leader
    /// sequences it (then [`Locate`] finds its entry).
    pub ledger_seq: u64,
    /// The order's interval, unix seconds.
    pub interval_start: i64,
    /// The server's wall clock when it accepted the order, unix milliseconds (not in the
    /// ledger).
    pub accepted_at_ms: i64,
}

impl ReceiptLeaf {
    /// The canonical bytes: `order_hash ‖ seq (u64 BE) ‖ interval (i64 BE) ‖ time (i64 BE)`.
    pub fn to_bytes(&self) -> [u8; LEAF_BYTES] {
        let mut b = [0u8; LEAF_BYTES];
        b[..32].copy_from_slice(&self.order_hash);
        b[32..40].copy_from_slice(&self.ledger_seq.to_be_bytes());
        b[40..48].copy_from_slice(&self.interval_start.to_be_bytes());
        b[48..].copy_from_slice(&self.accepted_at_ms.to_be_bytes());
        b
    }

    /// `SHA-256(LEAF_DOMAIN ‖ canonical bytes)`: the value the Merkle tree is built over.
    pub fn digest(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(LEAF_DOMAIN);
        h.update(self.to_bytes());
        h.finalize().into()
    }
}

/// SHA-256 of the signed order bytes, as a receipt names the order.
pub fn order_hash(order_bytes: &[u8]) -> Hash {
    Sha256::digest(order_bytes).into()
}

/// The key id of an ed25519 public key (first 4 bytes of SHA-256 of its bytes).
pub fn key_id(key: &VerifyingKey) -> KeyId {
    let d = Sha256::digest(key.as_bytes());
    [d[0], d[1], d[2], d[3]]
}

/// The operator's signed statement over one batch of receipts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchStatement {
    /// The ledger's log name (as in its checkpoints).
    pub origin: String,
    /// Leaves in the batch's tree.
    pub leaf_count: u64,
    /// RFC 9162 root over the batch's leaf digests.
    #[serde(with = "hex_array")]
    pub root: Hash,
    /// Which key signed.
    #[serde(with = "hex_array")]
    pub key_id: KeyId,
    /// ed25519 over [`BatchStatement::signed_text`].
    #[serde(with = "hex_array")]
    pub signature: [u8; 64],
}

/// The exact text a receipt statement's signature covers.
pub fn signed_text(origin: &str, leaf_count: u64, root: &Hash) -> String {
    format!(
        "{STATEMENT_HEADER}\n{origin}\n{leaf_count}\n{}\n",
        B64.encode(root)
    )
}

fn check_origin(origin: &str) -> Result<(), ReceiptError> {
    if origin.is_empty() || origin.len() > ORIGIN_BYTES_MAX || origin.chars().any(char::is_control)
    {
        return Err(ReceiptError::Malformed(format!(
            "invalid origin {origin:?}"
        )));
    }
    Ok(())
}

impl BatchStatement {
    /// The text the signature covers.
    pub fn signed_text(&self) -> String {
        signed_text(&self.origin, self.leaf_count, &self.root)
    }

    /// Checks the key id and the signature (`verify_strict`; weak keys never verify).
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), ReceiptError> {
        check_origin(&self.origin)?;
        if self.key_id != key_id(key) {
            return Err(ReceiptError::WrongKey {
                expected: hex::encode(key_id(key)),
                found: hex::encode(self.key_id),
            });
        }
        let sig = Signature::from_bytes(&self.signature);
        if key.is_weak()
            || key
                .verify_strict(self.signed_text().as_bytes(), &sig)
                .is_err()
        {
            return Err(ReceiptError::BadSignature);
        }
        Ok(())
    }

    /// The statement as a signed note: the text, a blank line, `— <origin> <base64(key id ‖
    /// signature)>`.
    pub fn to_note(&self) -> String {
        let mut sig = Vec::with_capacity(68);
        sig.extend_from_slice(&self.key_id);
        sig.extend_from_slice(&self.signature);
        format!(
            "{}\n\u{2014} {} {}\n",
            self.signed_text(),
            self.origin,
            B64.encode(sig)
        )
    }
}

/// One accepted order's receipt: its leaf, where it sits in its batch's tree, and the batch's
/// signed statement. Serialises to self-contained JSON (the file `baton audit check-receipt`
/// reads).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Receipt {
    /// What the leaf commits to.
    #[serde(flatten)]
    pub leaf: ReceiptLeaf,
    /// Position of the leaf in the batch, from 0.
    pub leaf_index: u64,
    /// RFC 9162 audit path, leaf to root.
    #[serde(with = "hex_list")]
    pub path: Vec<Hash>,
    /// The batch's signed statement.
    pub statement: BatchStatement,
}

impl Receipt {
    /// Checks the statement's signature with the operator key and that the leaf and path lead
    /// to the signed root.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), ReceiptError> {
        self.statement.verify(key)?;
        let root = root_from_path(
            self.leaf_index,
            self.statement.leaf_count,
            &self.leaf.digest(),
            &self.path,
        )
        .ok_or(ReceiptError::BadPath)?;
        if root != self.statement.root {
            return Err(ReceiptError::BadPath);
        }
        Ok(())
    }

    /// The wire message.
    pub fn to_proto(&self) -> pb::Receipt {
        pb::Receipt {
            order_hash: self.leaf.order_hash.to_vec(),
            ledger_seq: self.leaf.ledger_seq,
            interval_start: self.leaf.interval_start,
            accepted_at_ms: self.leaf.accepted_at_ms,
            leaf_index: self.leaf_index,
            path: self.path.concat(),
            leaf_count: self.statement.leaf_count,
            root: self.statement.root.to_vec(),
            origin: self.statement.origin.clone(),
            key_id: self.statement.key_id.to_vec(),
            signature: self.statement.signature.to_vec(),
        }
    }

    /// The wire message, without copying the origin.
    pub fn into_proto(self) -> pb::Receipt {
        let mut path = Vec::with_capacity(self.path.len() * 32);
        self.path.iter().for_each(|h| path.extend_from_slice(h));
        pb::Receipt {
            order_hash: self.leaf.order_hash.to_vec(),
            ledger_seq: self.leaf.ledger_seq,
            interval_start: self.leaf.interval_start,
            accepted_at_ms: self.leaf.accepted_at_ms,
            leaf_index: self.leaf_index,
            path,
            leaf_count: self.statement.leaf_count,
            root: self.statement.root.to_vec(),
            origin: self.statement.origin,
            key_id: self.statement.key_id.to_vec(),
            signature: self.statement.signature.to_vec(),
        }
    }

    /// Parses the wire message (does not verify it).
    pub fn from_proto(r: &pb::Receipt) -> Result<Self, ReceiptError> {
        fn fixed<const N: usize>(what: &str, b: &[u8]) -> Result<[u8; N], ReceiptError> {
            b.try_into().map_err(|_| {
                ReceiptError::Malformed(format!("{what} is {} bytes, not {N}", b.len()))
            })
        }
        if !r.path.len().is_multiple_of(32) || r.path.len() / 32 > PATH_HASHES_MAX {
            return Err(ReceiptError::Malformed(format!(
                "path is {} bytes, not a multiple of 32 up to {PATH_HASHES_MAX} hashes",
                r.path.len()
            )));
        }
        Ok(Receipt {
            leaf: ReceiptLeaf {
                order_hash: fixed("order_hash", &r.order_hash)?,
                ledger_seq: r.ledger_seq,
                interval_start: r.interval_start,
                accepted_at_ms: r.accepted_at_ms,
            },
            leaf_index: r.leaf_index,
            path: r
                .path
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32-byte chunks"))
                .collect(),
            statement: BatchStatement {
                origin: r.origin.clone(),
                leaf_count: r.leaf_count,
                root: fixed("root", &r.root)?,
                key_id: fixed("key_id", &r.key_id)?,
                signature: fixed("signature", &r.signature)?,
            },
        })
    }
}

/// Builds and signs the receipts of one batch: one statement signature (`sign` is called once,
/// over [`signed_text`]), then per leaf only hashing. Returns no receipts for no leaves.
pub fn issue(
    leaves: &[ReceiptLeaf],
    origin: &str,
    key: &VerifyingKey,
    sign: impl FnOnce(&[u8]) -> [u8; 64],
) -> Result<Vec<Receipt>, ReceiptError> {
    check_origin(origin)?;
    if leaves.is_empty() {
        return Ok(Vec::new());
    }
    let digests: Vec<Hash> = leaves.iter().map(|l| leaf_hash(&l.digest())).collect();
    // A path has at most ceil(log2 n) hashes: allocate each once.
    let depth = (usize::BITS - (leaves.len() - 1).leading_zeros()) as usize;
    let mut paths = vec![Vec::with_capacity(depth); leaves.len()];
    let root = subtree(&digests, &mut paths);
    let n = leaves.len() as u64;
    let statement = BatchStatement {
        origin: origin.to_string(),
        leaf_count: n,
        root,
        key_id: key_id(key),
        signature: sign(signed_text(origin, n, &root).as_bytes()),
    };
    Ok(leaves
        .iter()
        .zip(paths)
        .enumerate()
        .map(|(i, (leaf, path))| Receipt {
            leaf: *leaf,
            leaf_index: i as u64,
            path,
            statement: statement.clone(),
        })
        .collect())
}

fn leaf_hash(digest: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(digest);
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    1usize << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// Root of the subtree over `leaves` (already leaf-hashed), appending to each leaf's path the
/// sibling roots from the bottom up: every audit path in one pass, `O(n log n)` hashes.
fn subtree(leaves: &[Hash], paths: &mut [Vec<Hash>]) -> Hash {
    let n = leaves.len();
    if n == 1 {
        return leaves[0];
    }
    let k = split(n);
    let (lp, rp) = paths.split_at_mut(k);
    let left = subtree(&leaves[..k], lp);
    let right = subtree(&leaves[k..], rp);
    lp.iter_mut().for_each(|p| p.push(right));
    rp.iter_mut().for_each(|p| p.push(left));
    node_hash(&left, &right)
}

/// The root an RFC 9162 audit path (§2.1.3.2) leads to from leaf digest `digest` at `index` in
/// a tree of `size` leaves; `None` if the path has the wrong length for that position.
pub fn root_from_path(index: u64, size: u64, digest: &Hash, path: &[Hash]) -> Option<Hash> {
    if index >= size || path.len() > PATH_HASHES_MAX {
        return None;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = leaf_hash(digest);
    for p in path {
        if s_n == 0 {
            return None;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    (s_n == 0).then_some(r)
}

/// A ledger checkpoint as the audit service sends it (a signed note): `<origin>\n<size>\n
/// <base64 root>\n`, a blank line, `— <origin> <base64(key id ‖ signature)>`. Checks the key
/// id and the signature and returns the signed size and root, so a client without the ledger
/// crate can check an inclusion proof against the operator's checkpoint.
pub fn verify_checkpoint_note(note: &str, key: &VerifyingKey) -> Result<(u64, Hash), ReceiptError> {
    let bad = |m: &str| ReceiptError::Malformed(format!("checkpoint note: {m}"));
    let (text, sig_line) = note
        .split_once("\n\n")
        .ok_or_else(|| bad("no blank line before the signature"))?;
    let mut lines = text.split('\n');
    let (Some(origin), Some(size), Some(root), None) =
        (lines.next(), lines.next(), lines.next(), lines.next())
    else {
        return Err(bad("expected origin, size and root lines"));
    };
    let size: u64 = size.parse().map_err(|_| bad("size is not a number"))?;
    let root: Hash = B64
        .decode(root)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("root is not base64 of 32 bytes"))?;
    let sig = sig_line
        .lines()
        .next()
        .and_then(|l| l.strip_prefix(&format!("\u{2014} {origin} ")))
        .and_then(|b| B64.decode(b).ok())
        .filter(|b| b.len() == 68)
        .ok_or_else(|| bad("no signature line for the origin"))?;
    if sig[..4] != key_id(key) {
        return Err(ReceiptError::WrongKey {
            expected: hex::encode(key_id(key)),
            found: hex::encode(&sig[..4]),
        });
    }
    let signature = Signature::from_bytes(sig[4..].try_into().expect("64 bytes"));
    if key.is_weak()
        || key
            .verify_strict(format!("{text}\n").as_bytes(), &signature)
            .is_err()
    {
        return Err(ReceiptError::BadSignature);
    }
    Ok((size, root))
}

/// A ledger entry as a receipt check sees it (from the ledger file or `GetEntries`).
#[derive(Clone, Copy, Debug)]
pub struct EntryView<'a> {
    /// Its seq.
    pub seq: u64,
    /// Its kind (`order`, `cancel`, `interval_result`, `settlement`, …).
    pub kind: &'a str,
    /// Its interval.
    pub interval_start: Option<i64>,
    /// Its body bytes.
    pub body: &'a [u8],
}

/// How the ledger's entry at a receipt's seq contradicts the receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Contradiction {
    /// The ledger has no entry at that seq.
    #[error("the ledger has no entry at seq {0}")]
    Missing(u64),
    /// The entry at that seq is not an `order` entry.
    #[error("the entry at seq {seq} is a {kind:?} entry, not an order")]
    NotAnOrder {
        /// The seq.
        seq: u64,
        /// Its kind.
        kind: String,
    },
    /// The entry's signed order bytes hash to something else.
    #[error("the order at seq {seq} hashes to {found}, the receipt names {expected}")]
    OtherOrder {
        /// The seq.
        seq: u64,
        /// Hex of the receipt's order hash.
        expected: String,
        /// Hex of the entry payload's hash.
        found: String,
    },
    /// The entry is for another interval.
    #[error("the order at seq {seq} is for interval {found:?}, the receipt says {expected}")]
    OtherInterval {
        /// The seq.
        seq: u64,
        /// The receipt's interval.
        expected: i64,
        /// The entry's interval.
        found: Option<i64>,
    },
    /// An intake receipt's order is in no `order` entry before its interval's gate.
    #[error("the gate of interval {interval_start} closed at seq {gate_seq} and no order entry before it holds the receipt's order")]
    NotSequenced {
        /// The receipt's interval.
        interval_start: i64,
        /// Its `gate_closed` entry.
        gate_seq: u64,
    },
    /// The entry's body is not a signed order.
    #[error("the entry at seq {seq} is not a readable signed order: {reason}")]
    Unreadable {
        /// The seq.
        seq: u64,
        /// Why.
        reason: String,
    },
}

#[derive(Deserialize)]
struct SignedBody {
    payload: String,
}

/// The order a receipt names, as its ledger entry spells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRef {
    /// `<participant>-<nonce>`.
    pub order_id: String,
    /// The participant.
    pub participant_id: String,
}

/// Checks that `entry` (the ledger's entry at the receipt's seq, `None` if there is none) is
/// the receipt's order: an `order` entry for the receipt's interval whose signed payload hashes
/// to the receipt's order hash.
pub fn judge_order_entry(
    receipt: &Receipt,
    entry: Option<EntryView<'_>>,
) -> Result<OrderRef, Contradiction> {
    let seq = receipt.leaf.ledger_seq;
    let e = entry
        .filter(|e| e.seq == seq)
        .ok_or(Contradiction::Missing(seq))?;
    if e.kind != "order" {
        return Err(Contradiction::NotAnOrder {
            seq,
            kind: e.kind.to_string(),
        });
    }
    let unreadable = |reason: String| Contradiction::Unreadable { seq, reason };
    let body: SignedBody =
        serde_json::from_slice(e.body).map_err(|err| unreadable(err.to_string()))?;
    let payload = hex::decode(&body.payload).map_err(|err| unreadable(err.to_string()))?;
    let found = order_hash(&payload);
    if found != receipt.leaf.order_hash {
        return Err(Contradiction::OtherOrder {
            seq,
            expected: hex::encode(receipt.leaf.order_hash),
            found: hex::encode(found),
        });
    }
    if e.interval_start != Some(receipt.leaf.interval_start) {
        return Err(Contradiction::OtherInterval {
            seq,
            expected: receipt.leaf.interval_start,
            found: e.interval_start,
        });
    }
    let order = pb::Order::decode(payload.as_slice()).map_err(|err| unreadable(err.to_string()))?;
    Ok(OrderRef {
        order_id: crate::wire::order_id(&order.participant_id, order.nonce),
        participant_id: order.participant_id,
    })
}

/// Finds the entry of an intake receipt's order (`ledger_seq` 0): feed it the ledger's entries
/// in seq order from the first. The order must be sequenced before its interval's gate: an
/// `order` entry for the interval whose signed bytes hash to the receipt's order hash.
#[derive(Clone, Debug)]
pub struct Locate {
    order_hash: Hash,
    interval_start: i64,
}

impl Locate {
    /// For `receipt`'s order.
    pub fn new(receipt: &Receipt) -> Self {
        Locate {
            order_hash: receipt.leaf.order_hash,
            interval_start: receipt.leaf.interval_start,
        }
    }

    /// `Some(Ok(seq))` at the order's entry, `Some(Err(_))` at the interval's gate without it,
    /// `None` to keep feeding.
    pub fn feed(&self, e: EntryView<'_>) -> Option<Result<u64, Contradiction>> {
        if e.interval_start != Some(self.interval_start) {
            return None;
        }
        match e.kind {
            "order" => {
                let body: SignedBody = serde_json::from_slice(e.body).ok()?;
                let payload = hex::decode(&body.payload).ok()?;
                (order_hash(&payload) == self.order_hash).then_some(Ok(e.seq))
            }
            "gate_closed" => Some(Err(Contradiction::NotSequenced {
                interval_start: self.interval_start,
                gate_seq: e.seq,
            })),
            _ => None,
        }
    }

    /// The receipt as if issued at `seq` (what [`judge_order_entry`] checks against the entry
    /// found there).
    pub fn at(receipt: &Receipt, seq: u64) -> Receipt {
        let mut r = receipt.clone();
        r.leaf.ledger_seq = seq;
        r
    }
}

/// Follows the ledger after a receipt's order entry: feed it every later entry in seq order
/// (until [`Scan::feed`] says it has seen enough), then ask for the [`Verdict`].
#[derive(Clone, Debug)]
pub struct Scan {
    order: OrderRef,
    interval_start: i64,
    cancel_seq: Option<u64>,
    result: Option<(u64, Vec<u8>)>,
    settlement: Option<(u64, Vec<u8>)>,
}

impl Scan {
    /// Starts after the order entry of `order` for `interval_start`.
    pub fn new(order: OrderRef, interval_start: i64) -> Self {
        Scan {
            order,
            interval_start,
            cancel_seq: None,
            result: None,
            settlement: None,
        }
    }

    /// Takes the next entry; `true` once the interval's result and settlement are both seen
    /// (nothing later matters).
    pub fn feed(&mut self, e: EntryView<'_>) -> bool {
        if self.result.is_none() && self.cancel_seq.is_none() {
            self.cancel_seq = cancels(e, &self.order.order_id);
        }
        if e.interval_start == Some(self.interval_start) {
            match e.kind {
                "interval_result" if self.result.is_none() => {
                    self.result = Some((e.seq, e.body.to_vec()))
                }
                "settlement" if self.result.is_some() && self.settlement.is_none() => {
                    self.settlement = Some((e.seq, e.body.to_vec()))
                }
                _ => {}
            }
        }
        self.result.is_some() && self.settlement.is_some()
    }

    /// The order's standing given what was fed.
    pub fn verdict(&self) -> Result<Verdict, RecordError> {
        let Some((rseq, rbody)) = &self.result else {
            return Ok(match self.cancel_seq {
                Some(cancel_seq) => Verdict::Cancelled { cancel_seq },
                None => Verdict::Pending,
            });
        };
        let view = |kind, seq: u64, body| EntryView {
            seq,
            kind,
            interval_start: Some(self.interval_start),
            body,
        };
        let v = judge_result(
            &self.order.order_id,
            &self.order.participant_id,
            view("interval_result", *rseq, rbody),
            self.settlement
                .as_ref()
                .map(|(seq, body)| view("settlement", *seq, body)),
        )?;
        Ok(match (v, self.cancel_seq) {
            (Verdict::Omitted { .. }, Some(cancel_seq)) => Verdict::Cancelled { cancel_seq },
            (v, _) => v,
        })
    }
}

/// If `entry` is a `cancel` entry for `order_id`, the cancel's seq.
pub fn cancels(entry: EntryView<'_>, order_id: &str) -> Option<u64> {
    if entry.kind != "cancel" {
        return None;
    }
    let body: SignedBody = serde_json::from_slice(entry.body).ok()?;
    let payload = hex::decode(&body.payload).ok()?;
    let c = pb::CancelRequest::decode(payload.as_slice()).ok()?;
    (c.order_id == order_id).then_some(entry.seq)
}

/// An included order's outcome, from the interval's recorded result and settlement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Included {
    /// `<participant>-<nonce>`.
    pub order_id: String,
    /// `energy` or `flex`: which list of the result names it.
    pub product: String,
    /// Accepted quantity, kW.
    pub accepted_total: Decimal,
    /// Money received (negative: paid), from the settlement postings to the participant's
    /// account (memo `energy <id>` or `flex <id> for …`).
    pub payment: Decimal,
    /// The `interval_result` entry.
    pub result_seq: u64,
    /// The `settlement` entry, if the interval has one.
    pub settlement_seq: Option<u64>,
}

/// What the ledger says about a receipt's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    /// In the interval's book, with its fill and payment.
    Included(Included),
    /// The interval is not recorded yet.
    Pending,
    /// The participant cancelled it (a signed cancel at `cancel_seq`).
    Cancelled {
        /// The cancel entry.
        cancel_seq: u64,
    },
    /// The interval's result does not list the order.
    Omitted {
        /// The `interval_result` entry that leaves it out.
        result_seq: u64,
    },
    /// The ledger's entry at the receipt's seq is not the receipt's order.
    Contradicted {
        /// How.
        contradiction: Contradiction,
    },
}

impl Verdict {
    /// `true` for the outcomes that prove the operator broke the receipt's promise.
    pub fn is_breach(&self) -> bool {
        matches!(self, Verdict::Omitted { .. } | Verdict::Contradicted { .. })
    }
}

#[derive(Deserialize)]
struct ResultOrder {
    id: String,
    /// A JSON number (or string) read as its exact decimal text, never through `f64`.
    accepted_total: Box<serde_json::value::RawValue>,
}

/// A JSON number or string holding a decimal, read exactly.
fn exact_decimal(raw: &serde_json::value::RawValue) -> Result<Decimal, String> {
    let text = raw.get().trim().trim_matches('"');
    Decimal::from_str_exact(text)
        .or_else(|_| Decimal::from_scientific(text))
        .map_err(|e| format!("{text:?} is not a decimal: {e}"))
}

#[derive(Deserialize)]
struct ResultBody {
    #[serde(default)]
    orders: Vec<ResultOrder>,
    #[serde(default)]
    flex_offers: Vec<ResultOrder>,
}

#[derive(Deserialize)]
struct SettlementPosting {
    account: String,
    amount: Decimal,
    #[serde(default)]
    memo: Option<String>,
}

#[derive(Deserialize)]
struct SettlementView {
    postings: Vec<SettlementPosting>,
}

/// Errors reading an interval's recorded result or settlement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable {what} entry at seq {seq}: {reason}")]
pub struct RecordError {
    /// `interval_result` or `settlement`.
    pub what: &'static str,
    /// The entry.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// Judges an order (`order_id` of `participant`) against its interval's `interval_result`
/// entry and `settlement` entry: included with its fill and payment, or omitted.
pub fn judge_result(
    order_id: &str,
    participant: &str,
    result: EntryView<'_>,
    settlement: Option<EntryView<'_>>,
) -> Result<Verdict, RecordError> {
    let r: ResultBody = serde_json::from_slice(result.body).map_err(|e| RecordError {
        what: "interval_result",
        seq: result.seq,
        reason: e.to_string(),
    })?;
    let found = r
        .orders
        .iter()
        .find(|o| o.id == order_id)
        .map(|o| ("energy", o))
        .or_else(|| {
            r.flex_offers
                .iter()
                .find(|o| o.id == order_id)
                .map(|o| ("flex", o))
        });
    let Some((product, o)) = found else {
        return Ok(Verdict::Omitted {
            result_seq: result.seq,
        });
    };
    let accepted_total = exact_decimal(&o.accepted_total).map_err(|reason| RecordError {
        what: "interval_result",
        seq: result.seq,
        reason,
    })?;
    let mut payment = Decimal::ZERO;
    if let Some(s) = settlement {
        let body: SettlementView = serde_json::from_slice(s.body).map_err(|e| RecordError {
            what: "settlement",
            seq: s.seq,
            reason: e.to_string(),
        })?;
        // The live market's accounts are participant ids; `participant:<id>` is accepted too.
        let prefixed = format!("participant:{participant}");
        let energy = format!("energy {order_id}");
        let flex = format!("flex {order_id} for ");
        payment = body
            .postings
            .iter()
            .filter(|p| p.account == participant || p.account == prefixed)
            .filter(|p| {
                p.memo
                    .as_deref()
                    .is_some_and(|m| m == energy || m.starts_with(&flex))
            })
            .map(|p| p.amount)
            .sum();
    }
    Ok(Verdict::Included(Included {
        order_id: order_id.to_string(),
        product: product.to_string(),
        accepted_total,
        payment,
        result_seq: result.seq,
        settlement_seq: settlement.map(|s| s.seq),
    }))
}

/// Serde: fixed-size byte arrays as lowercase hex.
mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer, const N: usize>(
        b: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom(format!("expected {N} bytes of hex")))
    }
}

/// Serde: a list of hashes as lowercase hex strings.
mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Hash;

    pub(super) fn serialize<S: Serializer>(v: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| {
                let b = hex::decode(s).map_err(serde::de::Error::custom)?;
                b.try_into()
                    .map_err(|_| serde::de::Error::custom("expected 32 bytes of hex"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn leaves(n: usize) -> Vec<ReceiptLeaf> {
        (0..n)
            .map(|i| ReceiptLeaf {
                order_hash: order_hash(format!("order {i}").as_bytes()),
                ledger_seq: 100 + i as u64,
                interval_start: 1_800_000_300,
                accepted_at_ms: 1_790_000_000_000 + i as i64,
            })
            .collect()
    }

    fn issued(key: &SigningKey, n: usize) -> Vec<Receipt> {
        issue(&leaves(n), "baton.test/ledger", &key.verifying_key(), |m| {
            key.sign(m).to_bytes()
        })
        .unwrap()
    }

    #[test]
    fn every_receipt_of_a_batch_verifies_and_the_tree_is_the_ledgers() {
        let key = SigningKey::from_bytes(&[7; 32]);
        for n in [1usize, 2, 3, 5, 8, 13, 64, 100] {
            let rs = issued(&key, n);
            assert_eq!(rs.len(), n);
            let digests: Vec<Hash> = leaves(n).iter().map(|l| l.digest()).collect();
            // The same RFC 9162 construction as the ledger's tree over entry hashes.
            assert_eq!(rs[0].statement.root, baton_ledger::merkle::root(&digests));
            for (i, r) in rs.iter().enumerate() {
                r.verify(&key.verifying_key()).unwrap();
                assert_eq!(
                    r.path,
                    baton_ledger::merkle::inclusion_proof(&digests, i as u64).unwrap()
                );
                assert!(baton_ledger::merkle::verify_inclusion(
                    i as u64,
                    n as u64,
                    &digests[i],
                    &r.path,
                    &r.statement.root
                ));
                let back = Receipt::from_proto(&r.to_proto()).unwrap();
                assert_eq!(&back, r);
                assert_eq!(r.clone().into_proto(), r.to_proto());
                let json = serde_json::to_string(r).unwrap();
                assert_eq!(&serde_json::from_str::<Receipt>(&json).unwrap(), r);
            }
        }
    }

    #[test]
    fn an_intake_receipt_locates_its_order_before_the_gate_or_names_the_gate() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut r = issued(&key, 1)[0].clone();
        let t = r.leaf.interval_start;
        let ours = b"order 0".to_vec();
        r.leaf.ledger_seq = 0;
        r.leaf.order_hash = order_hash(&ours);
        let body = |payload: &[u8]| format!("{{\"payload\":\"{}\"}}", hex::encode(payload));
        let (other, mine) = (body(b"order 1"), body(&ours));
        let e = |seq, kind: &'static str, interval, body: &str| Owned {
            seq,
            kind,
            interval_start: Some(interval),
            body: body.as_bytes().to_vec(),
        };
        let find = Locate::new(&r);
        // Another order, our order for another interval, then ours.
        assert_eq!(find.feed(e(1, "order", t, &other).view()), None);
        assert_eq!(find.feed(e(2, "order", t + 300, &mine).view()), None);
        assert_eq!(find.feed(e(3, "order", t, &mine).view()), Some(Ok(3)));
        assert_eq!(Locate::at(&r, 3).leaf.ledger_seq, 3);
        // The gate first: the order was left out.
        assert_eq!(
            find.feed(e(4, "gate_closed", t, "{}").view()),
            Some(Err(Contradiction::NotSequenced {
                interval_start: t,
                gate_seq: 4
            }))
        );
        // Another interval's gate says nothing.
        assert_eq!(find.feed(e(5, "gate_closed", t + 300, "{}").view()), None);
    }

    /// An owned entry, for building views in tests.
    struct Owned {
        seq: u64,
        kind: &'static str,
        interval_start: Option<i64>,
        body: Vec<u8>,
    }

    impl Owned {
        fn view(&self) -> EntryView<'_> {
            EntryView {
                seq: self.seq,
                kind: self.kind,
                interval_start: self.interval_start,
                body: &self.body,
            }
        }
    }

    #[test]
    fn tampering_with_any_field_fails_verification() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let vk = key.verifying_key();
        let r = issued(&key, 5)[2].clone();
        r.verify(&vk).unwrap();
        type Tamper = Box<dyn Fn(&mut Receipt)>;
        let tampered: Vec<(&str, Tamper, ReceiptError)> = vec![
            (
                "seq",
                Box::new(|r| r.leaf.ledger_seq += 1),
                ReceiptError::BadPath,
            ),
            (
                "hash",
                Box::new(|r| r.leaf.order_hash[0] ^= 1),
                ReceiptError::BadPath,
            ),
            (
                "interval",
                Box::new(|r| r.leaf.interval_start += 300),
                ReceiptError::BadPath,
            ),
            (
                "time",
                Box::new(|r| r.leaf.accepted_at_ms -= 1),
                ReceiptError::BadPath,
            ),
            (
                "path",
                Box::new(|r| r.path[1][5] ^= 1),
                ReceiptError::BadPath,
            ),
            (
                "path length",
                Box::new(|r| {
                    r.path.pop();
                }),
                ReceiptError::BadPath,
            ),
            (
                "index",
                Box::new(|r| r.leaf_index = 3),
                ReceiptError::BadPath,
            ),
            (
                "root",
                Box::new(|r| r.statement.root[0] ^= 1),
                ReceiptError::BadSignature,
            ),
            (
                "leaf count",
                Box::new(|r| r.statement.leaf_count = 6),
                ReceiptError::BadSignature,
            ),
            (
                "origin",
                Box::new(|r| r.statement.origin = "other/ledger".into()),
                ReceiptError::BadSignature,
            ),
            (
                "signature",
                Box::new(|r| r.statement.signature[10] ^= 1),
                ReceiptError::BadSignature,
            ),
        ];
        for (what, change, expected) in tampered {
            let mut t = r.clone();
            change(&mut t);
            assert_eq!(t.verify(&vk), Err(expected), "tampered {what}");
        }
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(matches!(
            r.verify(&other),
            Err(ReceiptError::WrongKey { .. })
        ));
    }

    #[test]
    fn the_statement_is_domain_separated_from_checkpoints() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let r = &issued(&key, 3)[0];
        let text = r.statement.signed_text();
        assert!(text.starts_with("baton receipt v1\nbaton.test/ledger\n3\n"));
        let checkpoint = baton_ledger::checkpoint::signed_text(
            &r.statement.origin,
            r.statement.leaf_count,
            &r.statement.root,
        );
        assert_ne!(text, checkpoint);
        assert!(r
            .statement
            .to_note()
            .contains("\n\n\u{2014} baton.test/ledger "));
    }

    #[test]
    fn ledger_checkpoint_notes_verify_without_the_ledger_crate() {
        let op = baton_ledger::OperatorKey::from_seed(&[7; 32]);
        let vk = *op.public_key().as_dalek();
        let c = baton_ledger::Checkpoint::sign(&op, "baton.test/ledger", 42, [9; 32]).unwrap();
        assert_eq!(verify_checkpoint_note(&c.to_note(), &vk), Ok((42, [9; 32])));
        let forged = c.to_note().replace("\n42\n", "\n43\n");
        assert_eq!(
            verify_checkpoint_note(&forged, &vk),
            Err(ReceiptError::BadSignature)
        );
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(matches!(
            verify_checkpoint_note(&c.to_note(), &other),
            Err(ReceiptError::WrongKey { .. })
        ));
    }

    #[test]
    fn malformed_wire_receipts_are_refused() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut p = issued(&key, 4)[1].to_proto();
        p.path.push(0);
        assert!(matches!(
            Receipt::from_proto(&p),
            Err(ReceiptError::Malformed(_))
        ));
        let mut p = issued(&key, 4)[1].to_proto();
        p.signature.pop();
        assert!(matches!(
            Receipt::from_proto(&p),
            Err(ReceiptError::Malformed(_))
        ));
    }
}
