//! The CMOS real-time clock (a Motorola MC146818 as the PC has it): port
//! 0x70 selects a byte of its 128, port 0x71 reads or writes it.
//!
//! Its time is guest time: the clock reads the wall-clock `epoch` the
//! machine is configured with at guest time 0 and counts whole guest
//! seconds from there, so the same seed reads the same dates on every run
//! and host (the host's clock is never read). Registers follow register
//! B's data mode (BCD or binary) and hour mode (12 or 24 hours) as the
//! guest sets it; setting B's SET bit stops the clock while the guest
//! writes a new time, and the clock restarts from it when SET clears.
//!
//! Register A's update-in-progress bit is computed from guest time: it
//! reads 1 in the [`UIP_NS`] before each second's update, as on the chip,
//! so a guest that polls it (Linux's `mc146818_avoid_UIP` before every
//! read of the time) sees it clear within a quarter millisecond.
//!
//! No interrupt is raised on IRQ 8: the enable bits of register B are
//! kept and read back, register C (the flags) reads 0. Linux reads the
//! clock at boot (`read_persistent_clock64`, and rtc-cmos for
//! `hctosys`); rtc-cmos requests IRQ 8 but needs it only for alarms and
//! update interrupts that a guest asks for through `/dev/rtc0`.
//!
//! Port 0x70's bit 7 masks NMIs on a PC; there is no NMI source it could
//! mask here, so it is dropped from the index.

use crate::codec::{DecodeError, Reader, Writer};
use crate::units::GuestNs;

/// The index port; bit 7 of a write is the NMI mask.
pub const RTC_INDEX_PORT: u16 = 0x70;
/// The data port.
pub const RTC_DATA_PORT: u16 = 0x71;
/// The CMOS bytes the index selects.
pub const CMOS_BYTES: usize = 128;
/// How long before each update register A's UIP bit reads 1: 244 µs,
/// eight cycles of the 32.768 kHz time base.
pub const UIP_NS: u64 = 8 * NS_PER_S / 32_768;
const NS_PER_S: u64 = 1_000_000_000;

/// Wall-clock time, seconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixSeconds(pub i64);

/// The clock's reading at guest time 0 unless the machine is configured
/// otherwise: 2026-01-01T00:00:00Z.
pub const DEFAULT_EPOCH: UnixSeconds = UnixSeconds(1_767_225_600);

/// The CMOS bytes this clock gives a meaning to.
pub mod reg {
    /// Seconds.
    pub const SECONDS: u8 = 0x00;
    /// Minutes.
    pub const MINUTES: u8 = 0x02;
    /// Hours (bit 7 is PM in 12-hour mode).
    pub const HOURS: u8 = 0x04;
    /// Day of the week, 1 = Sunday.
    pub const WEEKDAY: u8 = 0x06;
    /// Day of the month.
    pub const DAY: u8 = 0x07;
    /// Month.
    pub const MONTH: u8 = 0x08;
    /// Year in the century.
    pub const YEAR: u8 = 0x09;
    /// Register A: UIP, divider, rate.
    pub const A: u8 = 0x0a;
    /// Register B: SET, interrupt enables, data and hour modes.
    pub const B: u8 = 0x0b;
    /// Register C: interrupt flags.
    pub const C: u8 = 0x0c;
    /// Register D: valid RAM and time.
    pub const D: u8 = 0x0d;
    /// The century (IBM's convention, which ACPI's FADT names).
    pub const CENTURY: u8 = 0x32;
}

/// Register A: an update is in progress or imminent.
pub const A_UIP: u8 = 0x80;
/// Register A's divider bits.
pub const A_DIVIDER: u8 = 0x70;
/// The divider for a 32.768 kHz time base: the only one that runs.
pub const A_DIVIDER_32KHZ: u8 = 0x20;
/// Register A after power-up: 32.768 kHz, 1024 Hz rate.
pub const A_POWER_UP: u8 = 0x26;
/// Register B: the clock is stopped for setting.
pub const B_SET: u8 = 0x80;
/// Register B: binary rather than BCD.
pub const B_BINARY: u8 = 0x04;
/// Register B: 24-hour rather than 12-hour.
pub const B_24_HOUR: u8 = 0x02;
/// Register B after power-up: 24 hours, BCD, no interrupts.
pub const B_POWER_UP: u8 = B_24_HOUR;
/// Register D: the RAM and time are valid (the battery is good).
pub const D_VALID: u8 = 0x80;
/// 12-hour mode's PM bit in the hours byte.
const HOUR_PM: u8 = 0x80;

/// A calendar date and time of day, as the clock's registers hold it.
/// Fields are in range (the year is 0..=9999, the day 1..=31) but the day
/// may not exist in the month: a guest may set one, and the next update
/// carries it over, as the chip would count on from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// 0..=9999.
    pub year: u16,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
}

const YEARS: u16 = 10_000;
const SECONDS_PER_DAY: i64 = 86_400;

impl DateTime {
    /// The UTC date and time of `t`, the year taken modulo 10000 (the
    /// clock's four digits).
    pub fn from_unix(t: UnixSeconds) -> DateTime {
        let days = t.0.div_euclid(SECONDS_PER_DAY);
        let secs = t.0.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year: u16::try_from(year.rem_euclid(i64::from(YEARS))).expect("below 10000"),
            month,
            day,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
        }
    }

    /// Seconds since 1970 (a day past the month's end counts on into the
    /// next month).
    pub fn to_unix(self) -> UnixSeconds {
        let days = days_from_civil(i64::from(self.year), self.month, self.day);
        UnixSeconds(
            days * SECONDS_PER_DAY
                + i64::from(self.hour) * 3600
                + i64::from(self.minute) * 60
                + i64::from(self.second),
        )
    }

    /// The day of the week, 1 = Sunday (1970-01-01 was a Thursday).
    pub fn weekday(self) -> u8 {
        let days = self.to_unix().0.div_euclid(SECONDS_PER_DAY);
        (days + 4).rem_euclid(7) as u8 + 1
    }

    fn in_range(self) -> bool {
        self.year < YEARS
            && (1..=12).contains(&self.month)
            && (1..=31).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date: the year shifted
/// to start in March, so the leap day ends it, then whole 400-year eras
/// (146097 days) plus the day of the era.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u8;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u8;
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    (year, month, day)
}

/// The clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtc {
    /// What guest time 0 reads (configuration: not saved).
    epoch: UnixSeconds,
    index: u8,
    /// The bytes the guest stores: registers A (but UIP) and B, the
    /// alarms, the general-purpose RAM. The time's bytes are not here.
    ram: [u8; CMOS_BYTES],
    /// The time the clock read at `mark`.
    at_mark: DateTime,
    /// The guest time of the clock's last update, or of its start: it
    /// updates at every whole second after.
    mark: GuestNs,
}

impl Rtc {
    /// A clock that reads `epoch` at guest time 0, its registers as after
    /// power-up.
    pub fn new(epoch: UnixSeconds) -> Rtc {
        let mut ram = [0; CMOS_BYTES];
        ram[usize::from(reg::A)] = A_POWER_UP;
        ram[usize::from(reg::B)] = B_POWER_UP;
        Rtc {
            epoch,
            index: 0,
            ram,
            at_mark: DateTime::from_unix(epoch),
            mark: GuestNs(0),
        }
    }

    /// What guest time 0 reads.
    pub fn epoch(&self) -> UnixSeconds {
        self.epoch
    }

    /// The time the clock shows at `now` (as the guest would read it).
    pub fn time(&mut self, now: GuestNs) -> DateTime {
        self.settle(now);
        self.at_mark
    }

    /// A guest write of `value` to port [`RTC_INDEX_PORT`].
    pub fn write_index(&mut self, value: u8) {
        self.index = value & 0x7f;
    }

    /// A guest read of port [`RTC_DATA_PORT`] at `now`.
    pub fn read_data(&mut self, now: GuestNs) -> u8 {
        self.settle(now);
        let b = self.register_b();
        let t = self.at_mark;
        match self.index {
            reg::SECONDS => encode(b, t.second),
            reg::MINUTES => encode(b, t.minute),
            reg::HOURS => encode_hour(b, t.hour),
            reg::WEEKDAY => encode(b, t.weekday()),
            reg::DAY => encode(b, t.day),
            reg::MONTH => encode(b, t.month),
            reg::YEAR => encode(b, (t.year % 100) as u8),
            reg::CENTURY => encode(b, (t.year / 100) as u8),
            reg::A if self.update_imminent(now) => self.ram[usize::from(reg::A)] | A_UIP,
            reg::C => 0,
            reg::D => D_VALID,
            other => self.ram[usize::from(other)],
        }
    }

    /// A guest write of `value` to port [`RTC_DATA_PORT`] at `now`.
    pub fn write_data(&mut self, now: GuestNs, value: u8) {
        self.settle(now);
        let b = self.register_b();
        let t = &mut self.at_mark;
        match self.index {
            reg::SECONDS => t.second = decode(b, value).min(59),
            reg::MINUTES => t.minute = decode(b, value).min(59),
            reg::HOURS => t.hour = decode_hour(b, value),
            reg::DAY => t.day = decode(b, value).clamp(1, 31),
            reg::MONTH => t.month = decode(b, value).clamp(1, 12),
            reg::YEAR => t.year = t.year / 100 * 100 + u16::from(decode(b, value).min(99)),
            reg::CENTURY => t.year = u16::from(decode(b, value).min(99)) * 100 + t.year % 100,
            // The weekday follows the date; C and D are read-only.
            reg::WEEKDAY | reg::C | reg::D => {}
            reg::A => self.ram[usize::from(reg::A)] = value & !A_UIP,
            other => self.ram[usize::from(other)] = value,
        }
        // Whatever started the clock starts it now.
        self.settle(now);
    }

    fn register_b(&self) -> u8 {
        self.ram[usize::from(reg::B)]
    }

    /// Whether the clock counts: not stopped by SET, the divider on the
    /// 32.768 kHz time base.
    fn running(&self) -> bool {
        self.register_b() & B_SET == 0
            && self.ram[usize::from(reg::A)] & A_DIVIDER == A_DIVIDER_32KHZ
    }

    /// Brings `at_mark` and `mark` to the last update at or before `now`;
    /// a stopped clock's mark follows `now`, so it counts a whole second
    /// from when it starts.
    fn settle(&mut self, now: GuestNs) {
        if !self.running() {
            self.mark = now;
            return;
        }
        let seconds = now.0.saturating_sub(self.mark.0) / NS_PER_S;
        if seconds == 0 {
            return;
        }
        let shown = self.at_mark.to_unix().0;
        let seconds_i64 = i64::try_from(seconds).expect("guest time below 2^63 ns");
        self.at_mark = DateTime::from_unix(UnixSeconds(shown + seconds_i64));
        self.mark = GuestNs(self.mark.0 + seconds * NS_PER_S);
    }

    /// Whether `now` is in the [`UIP_NS`] before an update (after
    /// [`Rtc::settle`]).
    fn update_imminent(&self, now: GuestNs) -> bool {
        self.running() && now.0.saturating_sub(self.mark.0) >= NS_PER_S - UIP_NS
    }

    /// Appends the clock's state (its epoch is configuration).
    pub(crate) fn save(&self, w: &mut Writer) {
        w.u8(self.index);
        w.raw(&self.ram);
        let t = self.at_mark;
        w.u16(t.year);
        for byte in [t.month, t.day, t.hour, t.minute, t.second] {
            w.u8(byte);
        }
        w.u64(self.mark.0);
    }

    /// Decodes a saved clock of a machine configured with `epoch`.
    pub(crate) fn restore(r: &mut Reader<'_>, epoch: UnixSeconds) -> Result<Rtc, DecodeError> {
        let index = r.u8()?;
        let ram: [u8; CMOS_BYTES] = r.raw(CMOS_BYTES)?.try_into().expect("CMOS_BYTES long");
        let at_mark = DateTime {
            year: r.u16()?,
            month: r.u8()?,
            day: r.u8()?,
            hour: r.u8()?,
            minute: r.u8()?,
            second: r.u8()?,
        };
        let mark = GuestNs(r.u64()?);
        if usize::from(index) >= CMOS_BYTES {
            return Err(DecodeError::Invalid(format!("RTC index {index:#x}")));
        }
        if !at_mark.in_range() {
            return Err(DecodeError::Invalid(format!("RTC time {at_mark:?}")));
        }
        if ram[usize::from(reg::A)] & A_UIP != 0 {
            return Err(DecodeError::Invalid("RTC register A holds UIP".into()));
        }
        Ok(Rtc {
            epoch,
            index,
            ram,
            at_mark,
            mark,
        })
    }
}

/// A register's byte for `value` in register B's data mode.
fn encode(b: u8, value: u8) -> u8 {
    if b & B_BINARY != 0 {
        value
    } else {
        ((value / 10) << 4) | (value % 10)
    }
}

/// A register's value from its byte in register B's data mode; a BCD
/// byte with a digit above 9 reads as its digits weigh.
fn decode(b: u8, byte: u8) -> u8 {
    if b & B_BINARY != 0 {
        byte
    } else {
        (byte >> 4) * 10 + (byte & 0xf)
    }
}

fn encode_hour(b: u8, hour: u8) -> u8 {
    if b & B_24_HOUR != 0 {
        return encode(b, hour);
    }
    let pm = if hour >= 12 { HOUR_PM } else { 0 };
    let twelve = match hour % 12 {
        0 => 12,
        h => h,
    };
    encode(b, twelve) | pm
}

fn decode_hour(b: u8, byte: u8) -> u8 {
    if b & B_24_HOUR != 0 {
        return decode(b, byte).min(23);
    }
    let twelve = decode(b, byte & !HOUR_PM).clamp(1, 12) % 12;
    if byte & HOUR_PM != 0 {
        twelve + 12
    } else {
        twelve
    }
}

#[cfg(test)]
mod tests;
