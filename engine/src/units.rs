//! Fixed decimal scales for quantities, prices and money.
//!
//! Baton's engine is unit-consistent rather than unit-specific: a quantity is an average power
//! over the interval (kW in native scenarios, MW in the study format) and a price is currency
//! per energy unit of the same size (currency/kWh or $/MWh), so `price × quantity` is a rate in
//! currency per hour and `price × quantity × minutes / 60` is money. The scales below are part
//! of the ledger format: never change them casually.

use rust_decimal::{Decimal, RoundingStrategy};

/// Decimal places of every quantity (power) that leaves the solver.
pub const QUANTITY_SCALE: u32 = 6;
/// Decimal places of every price that leaves the solver.
pub const PRICE_SCALE: u32 = 6;
/// Decimal places of money: the currency's minor unit (cents).
pub const MONEY_SCALE: u32 = 2;

/// Largest quantity accepted on any block or limit, in the market's power unit (1e8: 100 GW when
/// the unit is kW): anything above is a typo, not an order.
pub const QUANTITY_ABS_MAX: Decimal = Decimal::from_parts(100_000_000, 0, 0, false, 0);
/// Largest absolute price accepted, in currency per energy unit (1e7).
pub const PRICE_ABS_MAX: Decimal = Decimal::from_parts(10_000_000, 0, 0, false, 0);

/// The one rule by which Baton rounds: half to even (banker's rounding) at a fixed scale,
/// padded to exactly that scale, and `-0` normalised to `0`.
pub fn round_at(value: Decimal, scale: u32) -> Decimal {
    let mut d = value.round_dp_with_strategy(scale, RoundingStrategy::MidpointNearestEven);
    d.rescale(scale);
    if d.is_zero() {
        d.set_sign_positive(true);
    }
    d
}

/// Money for a rate (currency per hour) held for `minutes`, before rounding.
pub fn money_exact(rate_per_hour: Decimal, minutes: u32) -> Decimal {
    rate_per_hour * Decimal::from(minutes) / Decimal::from(60)
}

/// Money rounded to the minor unit by [`round_at`].
pub fn money(rate_per_hour: Decimal, minutes: u32) -> Decimal {
    round_at(money_exact(rate_per_hour, minutes), MONEY_SCALE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn rounding_is_half_even_padded_and_signless_at_zero() {
        assert_eq!(round_at(dec!(0.0000005), 6).to_string(), "0.000000");
        assert_eq!(round_at(dec!(0.0000015), 6).to_string(), "0.000002");
        assert_eq!(round_at(dec!(-0.0000001), 6).to_string(), "0.000000");
        assert!(round_at(dec!(-0.0000001), 6).is_sign_positive());
        assert_eq!(round_at(dec!(7), 2).to_string(), "7.00");
    }

    #[test]
    fn five_minutes_of_one_kw_at_twelve_per_kwh_is_one() {
        // 12 currency/kWh × 1 kW × 5/60 h = 1.00
        assert_eq!(money(dec!(12), 5), dec!(1.00));
        assert_eq!(QUANTITY_ABS_MAX, dec!(100000000));
    }
}
