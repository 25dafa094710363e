//! One validator: the per-record checks of `baton_engine::validate` (what a live market's intake
//! calls, one order at a time) agree with `Market::new` on a whole book, and every record kind
//! is bounded by a named limit.

use baton_engine::model::{
    BlockSpec, DeviceSpec, Direction, FlexOfferSpec, FlexRequirementSpec, GridConnectionSpec,
    NodeSpec, OrderSpec, DEVICES_MAX, FLEX_OFFERS_PER_INTERVAL_MAX,
    FLEX_REQUIREMENTS_PER_INTERVAL_MAX, GRID_CONNECTIONS_MAX, ID_LEN_MAX,
};
use baton_engine::validate::Network;
use baton_engine::{Market, MarketError, MarketSpec, Side};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

/// Nodes A, B, C; devices dA at A and dB at B; floor −10, cap 100; one grid connection and one
/// flexibility requirement, so the book meets every kind of network record.
fn network() -> MarketSpec {
    MarketSpec {
        name: "validate".into(),
        interval_minutes: 5,
        price_floor: dec!(-10),
        price_cap: dec!(100),
        line_violation_penalty: None,
        nodes: ["A", "B", "C"]
            .into_iter()
            .map(|id| NodeSpec { id: id.into() })
            .collect(),
        lines: Vec::new(),
        grid_connections: vec![GridConnectionSpec {
            id: "feeder".into(),
            node: "A".into(),
            import_limit: dec!(50),
            import_price: dec!(30),
            export_limit: dec!(50),
            export_price: dec!(5),
        }],
        devices: vec![
            DeviceSpec {
                id: "dA".into(),
                node: "A".into(),
                capacity: dec!(10),
            },
            DeviceSpec {
                id: "dB".into(),
                node: "B".into(),
                capacity: dec!(10),
            },
        ],
        orders: Vec::new(),
        flex_requirements: vec![FlexRequirementSpec {
            id: "need".into(),
            buyer: None,
            nodes: vec!["A".into(), "B".into()],
            direction: Direction::Up,
            blocks: vec![BlockSpec {
                quantity: dec!(5),
                price: Some(dec!(20)),
            }],
        }],
        flex_offers: Vec::new(),
    }
}

/// Quantities: valid ones and each way a quantity can be wrong.
fn quantity() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        24 => (1i64..=5000).prop_map(|c| Decimal::new(c, 2)),
        1 => Just(Decimal::ZERO),
        1 => Just(dec!(-0)),
        1 => (1i64..=500).prop_map(|c| Decimal::new(-c, 2)),
        1 => Just(dec!(0.0000001)),
        1 => Just(dec!(1.2345675)),
        1 => Just(dec!(100000000)),
        1 => Just(dec!(100000000.000001)),
        1 => Just(dec!(1.500000000)),
    ]
}

/// Prices: must-take, within floor and cap (including both), and each way one can be wrong.
fn price() -> impl Strategy<Value = Option<Decimal>> {
    prop_oneof![
        2 => Just(None),
        24 => (-1000i64..=10000).prop_map(|c| Some(Decimal::new(c, 2))),
        1 => Just(Some(dec!(-10))),
        1 => Just(Some(dec!(100))),
        1 => Just(Some(dec!(-10.000001))),
        1 => Just(Some(dec!(100.000001))),
        1 => Just(Some(dec!(50.0000001))),
        1 => Just(Some(dec!(10000001))),
        1 => Just(Some(dec!(50.000000000))),
    ]
}

fn block() -> impl Strategy<Value = BlockSpec> {
    (quantity(), price()).prop_map(|(quantity, price)| BlockSpec { quantity, price })
}

/// Curves of 0 to 18 blocks (16 allowed), mostly short, sometimes with a block repeated.
fn blocks() -> impl Strategy<Value = Vec<BlockSpec>> {
    let len = prop_oneof![8 => 1usize..=3, 1 => Just(0usize), 2 => 4usize..=18];
    (
        len.prop_flat_map(|n| prop::collection::vec(block(), n)),
        any::<bool>(),
    )
        .prop_map(|(mut b, repeat)| {
            if repeat && !b.is_empty() && b.len() < 18 {
                b.push(b[0].clone());
            }
            b
        })
}

fn node() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => Just("A".to_string()),
        5 => Just("B".to_string()),
        2 => Just("C".to_string()),
        1 => Just("Z".to_string()),
        1 => Just(String::new()),
    ]
}

fn device() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => Just(None),
        2 => Just(Some("dA".to_string())),
        2 => Just(Some("dB".to_string())),
        1 => Just(Some("dX".to_string())),
    ]
}

fn participant() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => Just(None),
        8 => "[a-z]{1,8}".prop_map(Some),
        1 => Just(Some(String::new())),
        1 => Just(Some("p".repeat(ID_LEN_MAX + 1))),
        1 => Just(Some("bell\u{7}".to_string())),
    ]
}

/// How a record's id is spelled; ids stay unique across the book (duplicates are a cross-record
/// check, not a per-record one).
#[derive(Clone, Copy, Debug)]
enum IdForm {
    Plain,
    Control,
    TooLong,
}

fn id_form() -> impl Strategy<Value = IdForm> {
    prop_oneof![
        18 => Just(IdForm::Plain),
        1 => Just(IdForm::Control),
        1 => Just(IdForm::TooLong),
    ]
}

fn id(i: usize, form: IdForm) -> String {
    match form {
        IdForm::Plain => format!("r{i}"),
        IdForm::Control => format!("r{i}\n"),
        IdForm::TooLong => format!("r{i}-{}", "x".repeat(ID_LEN_MAX)),
    }
}

/// One generated record: an energy order or a flexibility offer.
#[derive(Clone, Debug)]
enum Record {
    Energy(OrderSpec),
    Flex(FlexOfferSpec),
}

fn record(i: usize) -> impl Strategy<Value = Record> {
    (
        any::<bool>(),
        id_form(),
        participant(),
        node(),
        any::<bool>(),
        blocks(),
        device(),
    )
        .prop_map(
            move |(energy, form, participant, node, up, blocks, device)| {
                let id = id(i, form);
                if energy {
                    Record::Energy(OrderSpec {
                        id,
                        participant,
                        node,
                        side: if up { Side::Sell } else { Side::Buy },
                        blocks,
                        device,
                    })
                } else {
                    Record::Flex(FlexOfferSpec {
                        id,
                        participant,
                        node,
                        direction: if up { Direction::Up } else { Direction::Down },
                        blocks,
                        device,
                    })
                }
            },
        )
}

fn book() -> impl Strategy<Value = Vec<Record>> {
    (0usize..=10).prop_flat_map(|n| (0..n).map(record).collect::<Vec<_>>())
}

/// The intake's check: one record against the validated network.
fn intake(net: &Network, r: &Record) -> Result<(), MarketError> {
    match r {
        Record::Energy(o) => net.order(o).map(drop),
        Record::Flex(f) => net.flex_offer(f).map(drop),
    }
}

/// The network with `records` in its book, as gate closure builds it.
fn with_book<'a>(records: impl IntoIterator<Item = &'a Record>) -> MarketSpec {
    let mut spec = network();
    for r in records {
        match r {
            Record::Energy(o) => spec.orders.push(o.clone()),
            Record::Flex(f) => spec.flex_offers.push(f.clone()),
        }
    }
    spec
}

fn build(spec: &MarketSpec, round: bool) -> Result<Market, MarketError> {
    if round {
        Market::new_rounding(spec)
    } else {
        Market::new(spec)
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Integration tests have no lib.rs beside them for proptest's default lookup.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/validate.txt",
        ))),
        ..ProptestConfig::default()
    })]

    /// Accept ⇔ accept: the book of every record intake accepts is accepted by `Market::new`,
    /// and each record intake refuses makes `Market::new` refuse with the same error.
    #[test]
    fn intake_checks_agree_with_market_new(book in book(), round in any::<bool>()) {
        let net = if round {
            Network::new_rounding(&network())
        } else {
            Network::new(&network())
        }
        .expect("the network validates");
        let (accepted, refused): (Vec<_>, Vec<_>) =
            book.iter().map(|r| (r, intake(&net, r))).partition(|(_, v)| v.is_ok());
        let accepted: Vec<&Record> = accepted.into_iter().map(|(r, _)| r).collect();
        let market = build(&with_book(accepted.iter().copied()), round);
        prop_assert!(market.is_ok(), "intake accepted {accepted:?}; Market::new: {market:?}");
        let market = market.unwrap();
        prop_assert_eq!(
            market.participant_order_count() + market.flex_offers().len(),
            accepted.len()
        );
        for (r, intake_err) in refused {
            let with = accepted.iter().copied().chain(std::iter::once(r));
            let e = build(&with_book(with), round).expect_err("Market::new refuses it too");
            prop_assert_eq!(e, intake_err.unwrap_err(), "{:?}", r);
        }
    }
}

#[test]
fn the_generators_reach_both_verdicts_for_both_kinds() {
    // A property that only ever saw refusals (or acceptances) would prove nothing: pin that a
    // valid and an invalid record of each kind are judged as hand-checked.
    let net = Network::new(&network()).unwrap();
    let energy = OrderSpec {
        id: "o".into(),
        participant: Some("alice".into()),
        node: "A".into(),
        side: Side::Sell,
        blocks: vec![
            BlockSpec {
                quantity: dec!(2),
                price: Some(dec!(-10)),
            },
            BlockSpec {
                quantity: dec!(2),
                price: Some(dec!(-10)),
            },
        ],
        device: Some("dA".into()),
    };
    assert!(net.order(&energy).is_ok());
    let at_b = OrderSpec {
        node: "B".into(),
        ..energy.clone()
    };
    assert_eq!(
        net.order(&at_b).unwrap_err().to_string(),
        "order \"o\": device \"dA\" is at another node"
    );
    let flex = FlexOfferSpec {
        id: "f".into(),
        participant: None,
        node: "B".into(),
        direction: Direction::Up,
        blocks: vec![BlockSpec {
            quantity: dec!(1),
            price: Some(dec!(100.000001)),
        }],
        device: None,
    };
    assert_eq!(
        net.flex_offer(&flex).unwrap_err().to_string(),
        "flex offer \"f\": blocks[0].price 100.000001 outside the price floor -10.000000 and cap 100.000000"
    );
}

/// Runs `Market::new` on the network with `grow` applied and returns the error text.
fn refusal(grow: impl FnOnce(&mut MarketSpec)) -> String {
    let mut spec = network();
    grow(&mut spec);
    Market::new(&spec).unwrap_err().to_string()
}

#[test]
fn one_record_over_each_limit_is_refused_naming_the_limit() {
    // The counts are checked before any record, so empty records (no heap) suffice; at the
    // limit itself the count passes and the first empty record is what is refused.
    let offer = FlexOfferSpec {
        id: String::new(),
        participant: None,
        node: String::new(),
        direction: Direction::Up,
        blocks: Vec::new(),
        device: None,
    };
    let n = FLEX_OFFERS_PER_INTERVAL_MAX;
    assert_eq!(
        refusal(|s| s.flex_offers = vec![offer.clone(); n + 1]),
        format!(
            "too many flex offers: {} (limit FLEX_OFFERS_PER_INTERVAL_MAX = {n})",
            n + 1
        )
    );
    assert_eq!(
        refusal(|s| s.flex_offers = vec![offer.clone(); n]),
        "flex offer id \"\" is empty or longer than 128 characters"
    );

    let req = FlexRequirementSpec {
        id: String::new(),
        buyer: None,
        nodes: Vec::new(),
        direction: Direction::Down,
        blocks: Vec::new(),
    };
    let n = FLEX_REQUIREMENTS_PER_INTERVAL_MAX;
    assert_eq!(
        refusal(|s| s.flex_requirements = vec![req.clone(); n + 1]),
        format!(
            "too many flex requirements: {} (limit FLEX_REQUIREMENTS_PER_INTERVAL_MAX = {n})",
            n + 1
        )
    );
    assert_eq!(
        refusal(|s| s.flex_requirements = vec![req.clone(); n]),
        "flex requirement id \"\" is empty or longer than 128 characters"
    );

    let device = DeviceSpec {
        id: String::new(),
        node: String::new(),
        capacity: Decimal::ZERO,
    };
    let n = DEVICES_MAX;
    assert_eq!(
        refusal(|s| s.devices = vec![device.clone(); n + 1]),
        format!("too many devices: {} (limit DEVICES_MAX = {n})", n + 1)
    );
    assert_eq!(
        refusal(|s| s.devices = vec![device.clone(); n]),
        "device id \"\" is empty or longer than 128 characters"
    );

    let grid = GridConnectionSpec {
        id: String::new(),
        node: String::new(),
        import_limit: Decimal::ZERO,
        import_price: Decimal::ZERO,
        export_limit: Decimal::ZERO,
        export_price: Decimal::ZERO,
    };
    let n = GRID_CONNECTIONS_MAX;
    assert_eq!(
        refusal(|s| s.grid_connections = vec![grid.clone(); n + 1]),
        format!(
            "too many grid connections: {} (limit GRID_CONNECTIONS_MAX = {n})",
            n + 1
        )
    );
    assert_eq!(
        refusal(|s| s.grid_connections = vec![grid.clone(); n]),
        "grid connection id \"\" is empty or longer than 128 characters"
    );
}

#[test]
fn a_flex_buyer_or_participant_id_is_checked_like_every_id() {
    // Before: the requirement's buyer and the offer's participant became accounts unchecked.
    assert_eq!(
        refusal(|s| s.flex_requirements[0].buyer = Some("x".repeat(ID_LEN_MAX + 1))),
        format!(
            "buyer id {:?} is empty or longer than 128 characters",
            "x".repeat(ID_LEN_MAX + 1)
        )
    );
    assert_eq!(
        refusal(|s| s.flex_offers.push(FlexOfferSpec {
            id: "f".into(),
            participant: Some(String::new()),
            node: "A".into(),
            direction: Direction::Up,
            blocks: vec![BlockSpec {
                quantity: dec!(1),
                price: None,
            }],
            device: None,
        })),
        "participant id \"\" is empty or longer than 128 characters"
    );
}
