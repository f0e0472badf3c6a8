//! What the reference path makes of a date, time or timestamp: fastavro converts each one to a
//! Python `date`, `time` or `datetime` as it reads it (`fastavro._logical_readers`), so a value
//! Python cannot hold (a year past 9999, a time of day past midnight) makes that record a dead
//! letter there, with CPython's exception; and a time of day up to an hour *before* midnight
//! comes back as another time, not an error. arrow-avro keeps the raw number in both cases.
//!
//! [`Kind::read`] is that conversion on the raw Avro long: the full check ([`crate::validate`])
//! names a bad record with it, and the conversion ([`crate::convert`]) rejects a batch holding
//! such a value (the decoder then checks it record by record) and writes fastavro's time where
//! it differs from the raw one. Values inside [`Kind::identity`] (every real date, time and
//! timestamp) need neither: the hot path only compares each value with that range.

/// A logical type fastavro converts, by what the conversion depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `int` `date`: `date.fromordinal(days + 719163)`.
    Date,
    /// `int` `time-millis` and `long` `time-micros`: `time(h, m, s, µs)` from the count of
    /// milli- or microseconds (`unit` per second).
    Time { unit: i64 },
    /// `long` `timestamp-*` and `local-timestamp-*` in milli- or microseconds: the epoch plus
    /// `timedelta(microseconds=value * per_unit_us)`.
    Timestamp { per_unit_us: i64 },
}

/// Days from 0001-01-01 (ordinal 1) to 1970-01-01.
const EPOCH_ORDINAL: i128 = 719_163;
/// 0001-01-01T00:00:00 and 9999-12-31T23:59:59.999999, in microseconds from the epoch.
const MIN_US: i128 = -62_135_596_800_000_000;
const MAX_US: i128 = 253_402_300_800_000_000 - 1;
const US_PER_DAY: i128 = 86_400_000_000;
/// `timedelta`'s limit on days.
const MAX_DELTA_DAYS: i128 = 999_999_999;

const C_INT_ABOVE: &str = "OverflowError: signed integer is greater than maximum";
const C_INT_BELOW: &str = "OverflowError: signed integer is less than minimum";

impl Kind {
    /// The kind of an Avro logical type fastavro converts (the `nanos` ones it leaves alone).
    pub fn of(logical_type: &str) -> Option<Self> {
        match logical_type {
            "date" => Some(Self::Date),
            "time-millis" => Some(Self::Time { unit: 1_000 }),
            "time-micros" => Some(Self::Time { unit: 1_000_000 }),
            "timestamp-millis" | "local-timestamp-millis" => Some(Self::Timestamp { per_unit_us: 1_000 }),
            "timestamp-micros" | "local-timestamp-micros" => Some(Self::Timestamp { per_unit_us: 1 }),
            _ => None,
        }
    }

    /// The raw values fastavro reads back unchanged (both ends included).
    pub fn identity(self) -> (i64, i64) {
        match self {
            Self::Date => (-719_162, 2_932_896), // 0001-01-01 ..= 9999-12-31
            Self::Time { unit } => (0, 86_400 * unit - 1),
            Self::Timestamp { per_unit_us } => {
                let p = i128::from(per_unit_us);
                // whole units inside [MIN_US, MAX_US]
                ((MIN_US / p) as i64, (MAX_US / p) as i64)
            }
        }
    }

    /// fastavro's value for the raw `v`, in the same unit, or the reason it fails (CPython's
    /// exception, as the reference path words it).
    pub fn read(self, v: i64) -> Result<i64, String> {
        match self {
            Self::Date => date(v).map(|()| v),
            Self::Time { unit } => time(v, unit),
            Self::Timestamp { per_unit_us } => timestamp(i128::from(v) * i128::from(per_unit_us)).map(|()| v),
        }
    }
}

/// `date.fromordinal(v + 719163)`: the ordinal goes through a C int, must be at least 1, and its
/// year at most 9999.
fn date(v: i64) -> Result<(), String> {
    let ordinal = i128::from(v) + EPOCH_ORDINAL;
    if ordinal > i128::from(i32::MAX) {
        return Err(C_INT_ABOVE.into());
    }
    if ordinal < i128::from(i32::MIN) {
        return Err(C_INT_BELOW.into());
    }
    if ordinal < 1 {
        return Err("ValueError: ordinal must be >= 1".into());
    }
    let year = year_of_ordinal(ordinal as i64);
    if year > 9999 {
        return Err(format!("ValueError: year {year} is out of range"));
    }
    Ok(())
}

/// The proleptic Gregorian year of a day ordinal (1 = 0001-01-01), as CPython's `ord_to_ymd`.
fn year_of_ordinal(ordinal: i64) -> i64 {
    const DI400Y: i64 = 146_097;
    const DI100Y: i64 = 36_524;
    const DI4Y: i64 = 1_461;
    let n = ordinal - 1;
    let (n400, n) = (n / DI400Y, n % DI400Y);
    let (n100, n) = (n / DI100Y, n % DI100Y);
    let (n4, n) = (n / DI4Y, n % DI4Y);
    let n1 = n / 365;
    let year = n400 * 400 + 1 + n100 * 100 + n4 * 4 + n1;
    if n1 == 4 || n100 == 4 {
        year - 1 // the last day of a leap year or of a 400-year cycle
    } else {
        year
    }
}

/// `time(int(v / hour), int(v / minute) % 60, int(v / second) % 60, v % second)` with Python's
/// true division (correctly rounded to a float, then truncated) and floor modulo.
fn time(v: i64, unit: i64) -> Result<i64, String> {
    let (second, minute, hour) = (unit, 60 * unit, 3_600 * unit);
    // The hour goes through a C int first. Where `v / hour` rounds to a float of 2**31 or more
    // (or to -(2**31 + 1) or less) is decided exactly: v / hour >= 2**31 - 2**-23 (the midpoint
    // below 2**31, a tie rounding to the even 2**31), or <= -(2**31 + 1) + 2**-22.
    let (v128, h128) = (i128::from(v), i128::from(hour));
    if v128 << 23 >= h128 * ((1i128 << 54) - 1) {
        return Err(C_INT_ABOVE.into());
    }
    if v128 << 22 <= -h128 * (((1i128 << 31) + 1) * (1 << 22) - 1) {
        return Err(C_INT_BELOW.into());
    }
    // Truncated toward zero, the hour is 0..=23 exactly when -hour < v < 24 hours (a quotient
    // this close to an integer never rounds across it).
    if v <= -hour || v >= 24 * hour {
        return Err("ValueError: hour must be in 0..23".into());
    }
    // |v| < 2**37 here: every quotient is exact enough to truncate as integers do.
    let h = v / hour;
    let m = (v / minute).rem_euclid(60);
    let s = (v / second).rem_euclid(60);
    Ok(h * hour + m * minute + s * second + v.rem_euclid(unit))
}

/// `epoch + timedelta(microseconds=us)`: the days go through a C int, then must stay within
/// timedelta's ±999,999,999, and the sum within the years 1..=9999.
fn timestamp(us: i128) -> Result<(), String> {
    let days = us.div_euclid(US_PER_DAY);
    if days < i128::from(i32::MIN) || days > i128::from(i32::MAX) {
        return Err("OverflowError: Python int too large to convert to C int".into());
    }
    if days.abs() > MAX_DELTA_DAYS {
        return Err(format!("OverflowError: days={days}; must have magnitude <= {MAX_DELTA_DAYS}"));
    }
    if !(MIN_US..=MAX_US).contains(&us) {
        return Err("OverflowError: date value out of range".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_ranges_read_back_unchanged_and_their_neighbours_do_not() {
        for lt in ["date", "time-millis", "time-micros", "timestamp-millis", "timestamp-micros"] {
            let k = Kind::of(lt).unwrap();
            let (lo, hi) = k.identity();
            assert_eq!(k.read(lo), Ok(lo), "{lt}");
            assert_eq!(k.read(hi), Ok(hi), "{lt}");
            assert_ne!(k.read(lo - 1), Ok(lo - 1), "{lt}");
            assert!(k.read(hi + 1).is_err(), "{lt}");
        }
        assert_eq!(Kind::of("timestamp-nanos"), None);
    }

    #[test]
    fn years_of_ordinals_as_python_counts_them() {
        assert_eq!(year_of_ordinal(1), 1);
        assert_eq!(year_of_ordinal(719_163), 1970);
        assert_eq!(year_of_ordinal(3_652_059), 9999); // 9999-12-31
        assert_eq!(year_of_ordinal(3_652_060), 10000);
        assert_eq!(year_of_ordinal(365), 1); // 0001 is not a leap year: day 365 is Dec 31
        assert_eq!(year_of_ordinal(366), 2);
        assert_eq!(year_of_ordinal(730_485), 2000); // 2000-12-31, a leap year's last day
        assert_eq!(year_of_ordinal(i64::from(i32::MAX)), 5_879_611);
    }

    #[test]
    fn dates_fail_as_date_fromordinal_does() {
        let d = Kind::Date;
        assert_eq!(d.read(2_932_897).unwrap_err(), "ValueError: year 10000 is out of range");
        assert_eq!(d.read(-719_163).unwrap_err(), "ValueError: ordinal must be >= 1");
        assert_eq!(d.read(2_146_764_484).unwrap_err(), "ValueError: year 5879611 is out of range");
        assert_eq!(d.read(2_146_764_485).unwrap_err(), C_INT_ABOVE);
        assert_eq!(d.read(i64::MIN).unwrap_err(), C_INT_BELOW);
    }

    #[test]
    fn a_time_before_midnight_comes_back_as_fastavro_makes_it() {
        let ms = Kind::Time { unit: 1_000 };
        // -1 ms: hour int(-0.0) = 0, minute 0, second 0, millisecond -1 % 1000 = 999
        assert_eq!(ms.read(-1), Ok(999));
        // -3599999 ms: minute int(-59.99) % 60 = 1, second int(-3599.999) % 60 = 1, ms 1
        assert_eq!(ms.read(-3_599_999), Ok(61_001));
        assert_eq!(ms.read(-3_600_000).unwrap_err(), "ValueError: hour must be in 0..23");
        assert_eq!(ms.read(86_400_000).unwrap_err(), "ValueError: hour must be in 0..23");
        assert_eq!(ms.read(1 << 62).unwrap_err(), C_INT_ABOVE);
        let us = Kind::Time { unit: 1_000_000 };
        assert_eq!(us.read(-1), Ok(999_999));
        assert_eq!(us.read(86_399_999_999), Ok(86_399_999_999));
    }

    #[test]
    fn the_hour_overflows_a_c_int_where_the_float_quotient_reaches_2_to_the_31() {
        let us = Kind::Time { unit: 1_000_000 };
        let hour: i64 = 3_600_000_000;
        let edge = hour * (1 << 31); // q = 2**31 exactly
        // 2**31 - 2**-23 is hour / 2**23 = 429.15... microseconds below the edge
        assert_eq!(us.read(edge - 429).unwrap_err(), C_INT_ABOVE);
        assert_eq!(us.read(edge - 430).unwrap_err(), "ValueError: hour must be in 0..23");
        let below = -hour * ((1 << 31) + 1); // q = -(2**31 + 1) exactly
        assert_eq!(us.read(below + 858).unwrap_err(), C_INT_BELOW); // 2**-22 hours = 858.3 µs
        assert_eq!(us.read(below + 859).unwrap_err(), "ValueError: hour must be in 0..23");
    }

    #[test]
    fn timestamps_fail_as_epoch_plus_timedelta_does() {
        let ms = Kind::Timestamp { per_unit_us: 1_000 };
        assert_eq!(ms.read(253_402_300_800_000).unwrap_err(), "OverflowError: date value out of range");
        assert_eq!(ms.read(-62_135_596_800_001).unwrap_err(), "OverflowError: date value out of range");
        assert_eq!(ms.read(1 << 62).unwrap_err(), "OverflowError: Python int too large to convert to C int");
        let us = Kind::Timestamp { per_unit_us: 1 };
        assert_eq!(us.read(1 << 62).unwrap_err(), "OverflowError: date value out of range");
        // 10**9 days and more: timedelta's own limit comes before the year's
        assert_eq!(
            ms.read(86_400_000 * 1_000_000_000).unwrap_err(),
            "OverflowError: days=1000000000; must have magnitude <= 999999999"
        );
    }
}
