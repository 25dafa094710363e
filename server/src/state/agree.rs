//! One validator: an order intake accepts is never refused by `Market::new` at gate closure,
//! and an order intake refuses for a field is refused by `Market::new` too. Random wire orders
//! (energy and flexibility, with and without devices, valid and not) go through
//! [`MarketState::validate_order`] exactly as the gRPC service calls it, and the book the
//! scheduler would build from them goes through `Market::new`.

use std::str::FromStr;

use baton_engine::Market;
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;

use super::*;

const TWO_NODE: &str = include_str!("../../../scenarios/two-node.toml");

/// A generated order, kept structured so the engine's record can be built from it whether or
/// not intake accepts it.
#[derive(Clone, Debug)]
struct Gen {
    node: &'static str,
    side: Side,
    product: Product,
    blocks: Vec<(&'static str, Option<&'static str>)>,
    device: Option<&'static str>,
}

fn gen_order() -> impl Strategy<Value = Gen> {
    // Nodes: two real ones and one the network lacks. Quantities and prices: in range, at
    // the edges, over the scale, over the limits, negative, outside floor (-1) and cap (10).
    let node = prop::sample::select(vec!["A", "B", "Z"]);
    let q = prop::sample::select(vec![
        "0",
        "-1",
        "5",
        "10",
        "10.5",
        "0.000001",
        "0.0000001",
        "100000000",
        "100000001",
    ]);
    let p = prop::option::weighted(
        0.85,
        prop::sample::select(vec![
            "-2",
            "-1",
            "0",
            "0.12",
            "0.350000",
            "10",
            "10.01",
            "0.1234567",
        ]),
    );
    let product = prop::sample::select(vec![
        Product::Energy,
        Product::Energy,
        Product::Flex(Direction::Up),
        Product::Flex(Direction::Down),
    ]);
    let side = prop::sample::select(vec![Side::Buy, Side::Sell]);
    let device = prop::option::weighted(0.4, prop::sample::select(vec!["bat-B", "ghost"]));
    (
        node,
        side,
        product,
        prop::collection::vec((q, p), 0..=18),
        device,
    )
        .prop_map(|(node, side, product, blocks, device)| Gen {
            node,
            // Flexibility is always offered as a sell: a flex buy is a wire-only refusal.
            side: if matches!(product, Product::Flex(_)) {
                Side::Sell
            } else {
                side
            },
            product,
            blocks,
            device,
        })
}

fn network() -> MarketSpec {
    let mut spec = baton_engine::scenario::parse(TWO_NODE).unwrap().market;
    spec.orders.clear();
    spec.flex_offers.clear();
    spec
}

/// The engine's record of a generated order, built directly (not through intake).
fn engine_record(g: &Gen, id: &str, participant: &str) -> OrderRecord {
    OrderRecord {
        id: id.to_string(),
        participant: participant.to_string(),
        interval_start: 300,
        node: g.node.to_string(),
        side: g.side,
        product: g.product,
        blocks: g
            .blocks
            .iter()
            .map(|(q, p)| BlockSpec {
                quantity: Decimal::from_str(q).unwrap(),
                price: p.map(|p| Decimal::from_str(p).unwrap()),
            })
            .collect(),
        device: g.device.map(str::to_string),
        status: OrderStatus::Open,
        ledger_seq: 0,
        accepted: Vec::new(),
        accepted_total: None,
    }
}

/// The market the scheduler clears for `records`.
fn book(network: &MarketSpec, records: &[OrderRecord]) -> MarketSpec {
    let mut spec = network.clone();
    let b = BookSpecs::from_records(records);
    spec.orders = b.orders;
    spec.flex_offers = b.flex_offers;
    spec
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn intake_and_market_new_agree(orders in prop::collection::vec(gen_order(), 1..10)) {
        let net = network();
        let mut state = MarketState::default();
        state.set_network(net.clone()).unwrap();
        let timing = Timing { interval_s: 300, gate_lead_s: 60, intervals_ahead: 3 };
        let limits = Limits::default();
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut accepted = Vec::new();
        for (i, g) in orders.iter().enumerate() {
            // One participant per order, at the order's node (so the node check is the
            // engine's, not intake's own "not your node").
            let pid = format!("p{i}");
            state.participants.insert(pid.clone(), Participant {
                key: key.verifying_key(),
                node: g.node.to_string(),
                roles: Vec::new(),
                capacity_kw: None,
                active: true,
            });
            let order = pb::Order {
                participant_id: pid.clone(),
                nonce: 1,
                interval_start: 300,
                node: g.node.to_string(),
                side: side_to_proto(g.side) as i32,
                blocks: g.blocks.iter().map(|(q, p)| pb::Block {
                    quantity: q.to_string(),
                    price: p.unwrap_or_default().to_string(),
                }).collect(),
                device: g.device.map(str::to_string),
                product: g.product.to_wire() as i32,
            };
            let bytes = order.encode_to_vec();
            let signed = pb::SignedOrder {
                signature: key.sign(&bytes).to_bytes().to_vec(),
                order: bytes,
            };
            let alone = engine_record(g, &order_id(&pid, 1), &pid);
            let engine = Market::new(&book(&net, std::slice::from_ref(&alone)));
            match state.validate_order(&signed, None, &timing, &limits, 0) {
                Ok(v) => {
                    prop_assert!(
                        engine.is_ok(),
                        "intake accepted {g:?} but Market::new refuses it: {}",
                        engine.unwrap_err()
                    );
                    accepted.push(v.record);
                }
                Err(e @ ServiceError::InvalidField { .. }) => prop_assert!(
                    engine.is_err(),
                    "intake refused {g:?} ({e}) but Market::new accepts it"
                ),
                Err(e) => prop_assert!(false, "unexpected refusal of {g:?}: {e}"),
            }
        }
        // Everything intake accepted clears together.
        if let Err(e) = Market::new(&book(&net, &accepted)) {
            prop_assert!(false, "the accepted book is refused: {e}");
        }
    }
}
