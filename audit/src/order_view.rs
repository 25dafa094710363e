//! A borrowed, allocation-free decode of a signed `baton.v1.Order`, for the audit's one pass over
//! a ledger of millions of orders: the book binding needs each order's participant, nonce,
//! interval, node, product and block count, not its strings copied into a `pb::Order`.
//!
//! It accepts exactly the payloads `prost` decodes as an `Order` (pinned by a property test
//! against `prost` on random and mutated payloads) and reads the same values: for a repeated
//! occurrence of a singular field the last one wins, unknown fields (groups included, to
//! `prost`'s nesting limit) are skipped, a known field with the wrong wire type, a malformed
//! varint, a length past the end or a string that is not UTF-8 is an error, and every block is
//! checked to be a well-formed `Block`.

/// `prost`'s nesting limit for messages and groups.
const RECURSION_LIMIT: u32 = 100;

/// The fields of an `Order` the book binding reads, borrowed from the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrderView<'a> {
    /// `participant_id`.
    pub participant_id: &'a str,
    /// `nonce`.
    pub nonce: u64,
    /// `interval_start`.
    pub interval_start: i64,
    /// `node`.
    pub node: &'a str,
    /// `side` (the enum's number).
    pub side: i32,
    /// How many `blocks`.
    pub blocks: usize,
    /// `device`, when present.
    pub device: Option<&'a str>,
    /// `product` (the enum's number).
    pub product: i32,
}

/// Why a payload is not an `Order`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(&'static str);

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return Err(DecodeError("invalid varint"));
            };
            self.buf = rest;
            if i == 9 && b > 1 {
                return Err(DecodeError("invalid varint"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(DecodeError("invalid varint"))
    }

    fn key(&mut self) -> Result<(u32, u8), DecodeError> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(DecodeError("invalid key"));
        }
        let wire = (key & 7) as u8;
        if wire > FIXED32 {
            return Err(DecodeError("invalid wire type"));
        }
        let tag = (key as u32) >> 3;
        if tag == 0 {
            return Err(DecodeError("invalid tag"));
        }
        Ok((tag, wire))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], DecodeError> {
        if len > self.buf.len() as u64 {
            return Err(DecodeError("buffer underflow"));
        }
        let (head, rest) = self.buf.split_at(len as usize);
        self.buf = rest;
        Ok(head)
    }

    fn delimited(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        self.take(len)
    }

    fn string(&mut self, wire: u8) -> Result<&'a str, DecodeError> {
        expect(wire, LEN)?;
        std::str::from_utf8(self.delimited()?).map_err(|_| DecodeError("invalid string"))
    }

    fn skip(&mut self, wire: u8, tag: u32, budget: u32) -> Result<(), DecodeError> {
        if budget == 0 {
            return Err(DecodeError("recursion limit reached"));
        }
        match wire {
            VARINT => {
                self.varint()?;
            }
            FIXED64 => {
                self.take(8)?;
            }
            LEN => {
                self.delimited()?;
            }
            FIXED32 => {
                self.take(4)?;
            }
            START_GROUP => loop {
                let (inner, inner_wire) = self.key()?;
                if inner_wire == END_GROUP {
                    if inner != tag {
                        return Err(DecodeError("unexpected end group tag"));
                    }
                    break;
                }
                self.skip(inner_wire, inner, budget - 1)?;
            },
            _ => return Err(DecodeError("unexpected end group tag")),
        }
        Ok(())
    }
}

fn expect(wire: u8, want: u8) -> Result<(), DecodeError> {
    if wire == want {
        Ok(())
    } else {
        Err(DecodeError("invalid wire type for a known field"))
    }
}

/// Checks a `Block` message: its two strings well-formed, unknown fields skippable.
fn check_block(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader { buf: bytes };
    while !r.buf.is_empty() {
        let (tag, wire) = r.key()?;
        match tag {
            1 | 2 => {
                r.string(wire)?;
            }
            _ => r.skip(wire, tag, RECURSION_LIMIT - 1)?,
        }
    }
    Ok(())
}

impl<'a> OrderView<'a> {
    /// Decodes `payload` as `prost` would decode a `baton.v1.Order`.
    pub fn decode(payload: &'a [u8]) -> Result<OrderView<'a>, DecodeError> {
        let mut o = OrderView::default();
        let mut r = Reader { buf: payload };
        while !r.buf.is_empty() {
            let (tag, wire) = r.key()?;
            match tag {
                1 => o.participant_id = r.string(wire)?,
                2 => {
                    expect(wire, VARINT)?;
                    o.nonce = r.varint()?;
                }
                3 => {
                    expect(wire, VARINT)?;
                    o.interval_start = r.varint()? as i64;
                }
                4 => o.node = r.string(wire)?,
                5 => {
                    expect(wire, VARINT)?;
                    o.side = r.varint()? as i32;
                }
                6 => {
                    expect(wire, LEN)?;
                    check_block(r.delimited()?)?;
                    o.blocks += 1;
                }
                7 => o.device = Some(r.string(wire)?),
                8 => {
                    expect(wire, VARINT)?;
                    o.product = r.varint()? as i32;
                }
                _ => r.skip(wire, tag, RECURSION_LIMIT)?,
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::v1 as pb;
    use proptest::prelude::*;
    use prost::Message;

    fn same(payload: &[u8]) -> Result<(), TestCaseError> {
        let theirs = pb::Order::decode(payload);
        let ours = OrderView::decode(payload);
        match (&theirs, &ours) {
            (Ok(t), Ok(o)) => {
                prop_assert_eq!(&t.participant_id, o.participant_id);
                prop_assert_eq!(t.nonce, o.nonce);
                prop_assert_eq!(t.interval_start, o.interval_start);
                prop_assert_eq!(&t.node, o.node);
                prop_assert_eq!(t.side, o.side);
                prop_assert_eq!(t.blocks.len(), o.blocks);
                prop_assert_eq!(t.device.as_deref(), o.device);
                prop_assert_eq!(t.product, o.product);
            }
            (Err(_), Err(_)) => {}
            _ => prop_assert!(
                false,
                "prost {:?}, view {:?} on {:?}",
                theirs,
                ours,
                payload
            ),
        }
        Ok(())
    }

    fn order() -> impl Strategy<Value = pb::Order> {
        (
            "[a-z0-9é]{0,12}",
            any::<u64>(),
            any::<i64>(),
            "[A-Z0-9]{0,4}",
            -2i32..4,
            prop::collection::vec(("[0-9.]{0,6}", "[0-9.]{0,6}"), 0..4),
            prop::option::of("[a-z]{0,5}"),
            -2i32..5,
        )
            .prop_map(
                |(participant_id, nonce, interval_start, node, side, blocks, device, product)| {
                    pb::Order {
                        participant_id,
                        nonce,
                        interval_start,
                        node,
                        side,
                        blocks: blocks
                            .into_iter()
                            .map(|(quantity, price)| pb::Block { quantity, price })
                            .collect(),
                        device,
                        product,
                    }
                },
            )
    }

    /// Edits: overwrite a byte, insert one, delete one, append a field or a group.
    fn edited(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
        for &(kind, at, b) in edits {
            let i = if bytes.is_empty() {
                0
            } else {
                at % (bytes.len() + 1)
            };
            match kind % 5 {
                0 if i < bytes.len() => bytes[i] = b,
                1 => bytes.insert(i, b),
                2 if i < bytes.len() => {
                    bytes.remove(i);
                }
                3 => bytes.extend_from_slice(&[(b >> 3).max(1) << 3 | (b & 7), b, b]),
                _ => bytes.extend_from_slice(&[0x4b, 0x08, b, 0x4c]),
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn decodes_exactly_what_prost_decodes(
            o in order(),
            edits in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..4),
        ) {
            let bytes = o.encode_to_vec();
            same(&bytes)?;
            same(&edited(bytes, &edits))?;
        }

        #[test]
        fn refuses_what_prost_refuses_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            same(&bytes)?;
        }
    }

    #[test]
    fn a_varint_past_64_bits_is_refused_as_prost_refuses_it() {
        // Field 2 (nonce): nine continuation bytes, then a tenth byte that would set bit 64.
        for last in [0x00u8, 0x01, 0x02, 0x7f] {
            let mut payload = vec![2 << 3];
            payload.extend_from_slice(&[0xff; 9]);
            payload.push(last);
            assert_eq!(
                pb::Order::decode(payload.as_slice()).is_ok(),
                OrderView::decode(&payload).is_ok(),
                "tenth byte {last:#x}"
            );
            assert_eq!(OrderView::decode(&payload).is_ok(), last <= 1);
        }
    }

    #[test]
    fn nested_groups_stop_where_prosts_limit_does() {
        for depth in [98usize, 99, 100, 101] {
            // An unknown group (field 15) nested `depth` deep inside a block.
            let mut block = Vec::new();
            for _ in 0..depth {
                block.push(15 << 3 | 3);
            }
            for _ in 0..depth {
                block.push(15 << 3 | 4);
            }
            let mut order = vec![6 << 3 | 2];
            prost::encoding::encode_varint(block.len() as u64, &mut order);
            order.extend_from_slice(&block);
            let mut top = Vec::new();
            for _ in 0..depth {
                top.push(15 << 3 | 3);
            }
            for _ in 0..depth {
                top.push(15 << 3 | 4);
            }
            for payload in [order, top] {
                assert_eq!(
                    pb::Order::decode(payload.as_slice()).is_ok(),
                    OrderView::decode(&payload).is_ok(),
                    "depth {depth}"
                );
            }
        }
    }
}
