//! The clock through its two ports, as a guest sees it.

use super::*;
use quickcheck::{QuickCheck, TestResult};

const S: u64 = NS_PER_S;

fn read(rtc: &mut Rtc, now: u64, index: u8) -> u8 {
    rtc.write_index(index);
    rtc.read_data(GuestNs(now))
}

fn write(rtc: &mut Rtc, now: u64, index: u8, value: u8) {
    rtc.write_index(index);
    rtc.write_data(GuestNs(now), value);
}

/// The time's bytes, in the order [`bytes`] reads them.
const TIME: [u8; 7] = [
    reg::SECONDS,
    reg::MINUTES,
    reg::HOURS,
    reg::DAY,
    reg::MONTH,
    reg::YEAR,
    reg::CENTURY,
];

/// Seconds, minutes, hours, day, month, year, century as raw bytes.
fn bytes(rtc: &mut Rtc, now: u64) -> [u8; 7] {
    TIME.map(|index| read(rtc, now, index))
}

#[test]
fn power_up_reads_the_epoch_in_bcd_and_24_hours() {
    let mut rtc = Rtc::new(DEFAULT_EPOCH);
    assert_eq!(bytes(&mut rtc, 0), [0, 0, 0, 0x01, 0x01, 0x26, 0x20]);
    assert_eq!(
        read(&mut rtc, 0, reg::WEEKDAY),
        5,
        "2026-01-01 is a Thursday"
    );
    assert_eq!(read(&mut rtc, 0, reg::A), A_POWER_UP);
    assert_eq!(read(&mut rtc, 0, reg::B), B_24_HOUR);
    assert_eq!(read(&mut rtc, 0, reg::C), 0, "no interrupt flags");
    assert_eq!(
        read(&mut rtc, 0, reg::D),
        D_VALID,
        "rtc-cmos needs bit 6 clear"
    );
}

#[test]
fn the_clock_counts_whole_guest_seconds() {
    let mut rtc = Rtc::new(DEFAULT_EPOCH);
    assert_eq!(bytes(&mut rtc, S - 1)[0], 0);
    assert_eq!(bytes(&mut rtc, S)[0], 1);
    // 1 day, 1 hour, 1 minute and 1.5 seconds later.
    let later = (86_400 + 3_600 + 61) * S + S / 2;
    assert_eq!(
        bytes(&mut rtc, later),
        [0x01, 0x01, 0x01, 0x02, 0x01, 0x26, 0x20]
    );
    assert_eq!(read(&mut rtc, later, reg::WEEKDAY), 6, "Friday");
}

#[test]
fn a_known_instant_reads_its_date() {
    // 10^9 seconds after 1970: 2001-09-09T01:46:40Z, a Sunday.
    let mut rtc = Rtc::new(UnixSeconds(1_000_000_000));
    assert_eq!(
        bytes(&mut rtc, 0),
        [0x40, 0x46, 0x01, 0x09, 0x09, 0x01, 0x20]
    );
    assert_eq!(read(&mut rtc, 0, reg::WEEKDAY), 1);
    // 2000-02-29 exists; 2100-02-29 does not.
    assert_eq!(DateTime::from_unix(UnixSeconds(951_782_400)).day, 29);
    let t = DateTime::from_unix(UnixSeconds(4_107_542_400)); // 2100-03-01
    assert_eq!((t.year, t.month, t.day), (2100, 3, 1));
    let before = DateTime::from_unix(UnixSeconds(4_107_542_400 - 86_400));
    assert_eq!((before.month, before.day), (2, 28));
}

#[test]
fn uip_reads_set_only_just_before_an_update() {
    let mut rtc = Rtc::new(DEFAULT_EPOCH);
    let a = |rtc: &mut Rtc, now| read(rtc, now, reg::A) & A_UIP != 0;
    assert!(!a(&mut rtc, 0));
    assert!(!a(&mut rtc, S - UIP_NS - 1));
    assert!(a(&mut rtc, S - UIP_NS));
    assert!(a(&mut rtc, S - 1));
    assert!(!a(&mut rtc, S), "the update is done");
    assert_eq!(bytes(&mut rtc, S)[0], 1);
    write(&mut rtc, S, reg::A, 0xff);
    assert_eq!(read(&mut rtc, S, reg::A), 0x7f, "UIP is read-only");
}

#[test]
fn binary_and_12_hour_modes_follow_register_b() {
    let mut rtc = Rtc::new(UnixSeconds(1_767_225_600 + 13 * 3600 + 5 * 60 + 9));
    assert_eq!(bytes(&mut rtc, 0)[..3], [0x09, 0x05, 0x13]);
    write(&mut rtc, 0, reg::B, B_BINARY);
    assert_eq!(bytes(&mut rtc, 0)[..3], [9, 5, 0x80 | 1], "1 PM");
    assert_eq!(bytes(&mut rtc, 0)[5..], [26, 20]);
    write(&mut rtc, 0, reg::B, B_BINARY | B_24_HOUR);
    assert_eq!(bytes(&mut rtc, 0)[2], 13);
    write(&mut rtc, 0, reg::B, 0);
    assert_eq!(bytes(&mut rtc, 0)[2], 0x80 | 0x01, "BCD, 12-hour");
    // Midnight and noon are 12 in 12-hour mode.
    write(&mut rtc, 0, reg::HOURS, 0x12);
    assert_eq!(rtc.time(GuestNs(0)).hour, 0);
    write(&mut rtc, 0, reg::HOURS, 0x80 | 0x12);
    assert_eq!(rtc.time(GuestNs(0)).hour, 12);
    assert_eq!(read(&mut rtc, 0, reg::HOURS), 0x80 | 0x12);
}

#[test]
fn set_stops_the_clock_and_it_restarts_from_the_time_written() {
    let mut rtc = Rtc::new(DEFAULT_EPOCH);
    let t0 = 10 * S + S / 2;
    write(&mut rtc, t0, reg::B, B_SET | B_24_HOUR);
    for (index, value) in [
        (reg::SECONDS, 0x58),
        (reg::MINUTES, 0x59),
        (reg::HOURS, 0x23),
        (reg::DAY, 0x28),
        (reg::MONTH, 0x02),
        (reg::YEAR, 0x28),
        (reg::CENTURY, 0x20),
    ] {
        write(&mut rtc, t0, index, value);
    }
    let stopped = t0 + 5 * S;
    assert_eq!(
        bytes(&mut rtc, stopped),
        [0x58, 0x59, 0x23, 0x28, 0x02, 0x28, 0x20]
    );
    assert_eq!(
        read(&mut rtc, stopped, reg::A) & A_UIP,
        0,
        "no update while set"
    );
    write(&mut rtc, stopped, reg::B, B_24_HOUR);
    assert_eq!(bytes(&mut rtc, stopped + S - 1)[0], 0x58);
    assert_eq!(bytes(&mut rtc, stopped + S)[0], 0x59);
    // 2028 is a leap year: 23:59:59 on the 28th becomes the 29th.
    assert_eq!(
        bytes(&mut rtc, stopped + 2 * S),
        [0, 0, 0, 0x29, 0x02, 0x28, 0x20]
    );
}

#[test]
fn a_stopped_divider_stops_the_clock() {
    let mut rtc = Rtc::new(DEFAULT_EPOCH);
    write(&mut rtc, 0, reg::A, 0x70 | 0x06);
    assert_eq!(bytes(&mut rtc, 100 * S)[0], 0);
    write(&mut rtc, 100 * S, reg::A, A_POWER_UP);
    assert_eq!(bytes(&mut rtc, 101 * S)[0], 1);
}

#[test]
fn the_nmi_mask_bit_selects_the_same_byte_and_ram_bytes_stick() {
    let mut rtc = Rtc::new(DEFAULT_EPOCH);
    write(&mut rtc, 0, 0x80 | 0x0f, 0x0a);
    assert_eq!(read(&mut rtc, 0, 0x0f), 0x0a, "the shutdown byte");
    write(&mut rtc, 0, 0x7f, 0x5a);
    assert_eq!(read(&mut rtc, 0, 0x80 | 0x7f), 0x5a);
    write(&mut rtc, 0, reg::D, 0);
    write(&mut rtc, 0, reg::C, 0xff);
    assert_eq!(read(&mut rtc, 0, reg::D), D_VALID);
    assert_eq!(read(&mut rtc, 0, reg::C), 0);
    write(&mut rtc, 0, reg::WEEKDAY, 3);
    assert_eq!(
        read(&mut rtc, 0, reg::WEEKDAY),
        5,
        "the weekday follows the date"
    );
}

#[test]
fn nonsense_values_are_taken_in_range() {
    let mut rtc = Rtc::new(DEFAULT_EPOCH);
    write(&mut rtc, 0, reg::B, B_SET | B_24_HOUR);
    for index in &TIME[..6] {
        write(&mut rtc, 0, *index, 0xff);
    }
    let t = rtc.time(GuestNs(0));
    assert_eq!(
        (t.second, t.minute, t.hour, t.day, t.month),
        (59, 59, 23, 31, 12)
    );
    assert_eq!(t.year, 2099);
}

fn saved(rtc: &Rtc) -> Vec<u8> {
    let mut w = Writer::new();
    rtc.save(&mut w);
    w.into_bytes()
}

#[test]
fn the_clock_restores_mid_second_and_counts_on() {
    let mut rtc = Rtc::new(DEFAULT_EPOCH);
    write(&mut rtc, 0, 0x40, 0x77);
    write(&mut rtc, 7 * S + 3, reg::B, B_BINARY | B_24_HOUR);
    rtc.write_index(reg::SECONDS);
    let bytes_saved = saved(&rtc);
    let mut back = Rtc::restore(&mut Reader::new(&bytes_saved), DEFAULT_EPOCH).expect("decodes");
    assert_eq!(back, rtc);
    assert_eq!(back.read_data(GuestNs(8 * S)), 8);
    assert_eq!(read(&mut back, 8 * S, 0x40), 0x77);
    for len in 0..bytes_saved.len() {
        assert!(Rtc::restore(&mut Reader::new(&bytes_saved[..len]), DEFAULT_EPOCH).is_err());
    }
}

#[test]
fn an_out_of_range_saved_clock_is_an_error() {
    let good = saved(&Rtc::new(DEFAULT_EPOCH));
    let time_at = 1 + CMOS_BYTES;
    for (at, value) in [
        (0, 0x80),
        (time_at + 2, 13),
        (time_at + 3, 0),
        (time_at + 6, 60),
    ] {
        let mut bad = good.clone();
        bad[at] = value;
        let error = Rtc::restore(&mut Reader::new(&bad), DEFAULT_EPOCH).unwrap_err();
        assert!(error.to_string().contains("RTC"), "{error}");
    }
    let mut bad = good;
    bad[1 + usize::from(reg::A)] |= A_UIP;
    assert!(Rtc::restore(&mut Reader::new(&bad), DEFAULT_EPOCH).is_err());
}

#[test]
fn the_calendar_round_trips_over_ten_thousand_years() {
    fn prop(t: i64) -> TestResult {
        // 0000-01-01 to 9999-12-31.
        let t = UnixSeconds(t.rem_euclid(315_569_520_000) - 62_167_219_200);
        let date = DateTime::from_unix(t);
        let next_day = DateTime::from_unix(UnixSeconds(t.0 + 86_400));
        let days_in_month = match date.month {
            2 if date.year % 4 == 0 && (date.year % 100 != 0 || date.year % 400 == 0) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let follows = if date.day < days_in_month {
            (next_day.month, next_day.day) == (date.month, date.day + 1)
        } else {
            next_day.day == 1 && (next_day.month == date.month % 12 + 1)
        };
        TestResult::from_bool(
            date.in_range()
                && date.to_unix() == t
                && follows
                && next_day.weekday() == date.weekday() % 7 + 1,
        )
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(prop as fn(i64) -> TestResult);
}

#[test]
fn a_clear_uip_promises_no_update_for_its_length() {
    // Linux's mc146818_avoid_UIP reads the time after seeing UIP clear;
    // the time must not change under it in the next UIP_NS.
    fn prop(now: u64, later: u64, epoch: i32) -> TestResult {
        let now = now % (1 << 50);
        let mut rtc = Rtc::new(UnixSeconds(DEFAULT_EPOCH.0 + i64::from(epoch)));
        if read(&mut rtc, now, reg::A) & A_UIP != 0 {
            return TestResult::discard();
        }
        let first = rtc.time(GuestNs(now));
        let second = rtc.time(GuestNs(now + later % UIP_NS));
        TestResult::from_bool(first == second)
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(prop as fn(u64, u64, i32) -> TestResult);
}

#[test]
fn guest_nonsense_on_the_ports_never_panics_and_saves() {
    fn prop(accesses: Vec<(u8, u8, u32)>) -> TestResult {
        let mut rtc = Rtc::new(DEFAULT_EPOCH);
        let mut now = 0u64;
        for (index, value, step) in accesses {
            now += u64::from(step) * 1000;
            rtc.write_index(index);
            if value & 1 == 0 {
                rtc.read_data(GuestNs(now));
            } else {
                rtc.write_data(GuestNs(now), value);
            }
        }
        let bytes = saved(&rtc);
        let back = Rtc::restore(&mut Reader::new(&bytes), DEFAULT_EPOCH);
        TestResult::from_bool(back.as_ref() == Ok(&rtc) && rtc.time(GuestNs(now)).in_range())
    }
    QuickCheck::new()
        .tests(1000)
        .quickcheck(prop as fn(Vec<(u8, u8, u32)>) -> TestResult);
}
