//! The local APIC timer, counted in guest time: its count is never stored
//! as it runs but derived from [`GuestNs`], so it reads the same on every
//! replay and after a restore, and the engine learns when it next fires
//! from [`ApicTimer::deadline`] instead of polling it.
//!
//! The timer's clock is [`APIC_TIMER_HZ`] before the divide configuration
//! divides it; the TSC-deadline mode compares against the TSC, which on
//! this platform counts [`TSC_HZ`] (one tick per guest nanosecond, as the
//! emulated engine's `rdtsc`).

use crate::codec::{DecodeError, Reader, Writer};
use crate::units::GuestNs;

/// The APIC timer's input clock (the "bus clock"): one tick per guest
/// nanosecond before division.
pub const APIC_TIMER_HZ: u64 = 1_000_000_000;
/// The TSC's rate: one tick per guest nanosecond.
pub const TSC_HZ: u64 = 1_000_000_000;
const NS_PER_TIMER_TICK: u64 = 1_000_000_000 / APIC_TIMER_HZ;
const NS_PER_TSC_TICK: u64 = 1_000_000_000 / TSC_HZ;

/// The writable bits of the divide configuration register (bits 0, 1, 3).
const DIVIDE_BITS: u32 = 0b1011;

/// The timer mode, bits 18:17 of the LVT timer register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMode {
    /// Counts down once from the initial count.
    OneShot,
    /// Counts down and reloads the initial count, again and again.
    Periodic,
    /// Fires when the TSC reaches IA32_TSC_DEADLINE.
    TscDeadline,
}

impl TimerMode {
    /// The mode an LVT timer value selects; the reserved encoding (11b)
    /// counts as one-shot, as a write of it is not refused.
    pub fn of_lvt(lvt: u32) -> TimerMode {
        match (lvt >> 17) & 0b11 {
            0b01 => TimerMode::Periodic,
            0b10 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }
}

/// The TSC value at guest time `now`.
pub fn tsc_at(now: GuestNs) -> u64 {
    now.0 / NS_PER_TSC_TICK
}

/// A count in progress: at `anchor` the count stood at `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counting {
    anchor: GuestNs,
    count: u32,
}

/// The timer's registers and its count.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApicTimer {
    initial_count: u32,
    divide_config: u32,
    counting: Option<Counting>,
    /// IA32_TSC_DEADLINE; 0 is disarmed.
    tsc_deadline: u64,
}

impl ApicTimer {
    /// The divide configuration register.
    pub fn divide_config(&self) -> u32 {
        self.divide_config
    }

    /// The initial count register.
    pub fn initial_count(&self) -> u32 {
        self.initial_count
    }

    /// The divisor the divide configuration selects: 1 to 128.
    pub fn divisor(&self) -> u64 {
        let code = (self.divide_config & 0b11) | ((self.divide_config & 0b1000) >> 1);
        match code {
            0b111 => 1,
            n => 2 << n,
        }
    }

    fn tick_ns(&self) -> u64 {
        self.divisor() * NS_PER_TIMER_TICK
    }

    /// Timer ticks since `counting` began, at `now`.
    fn ticks_since(&self, counting: Counting, now: GuestNs) -> u64 {
        now.0.saturating_sub(counting.anchor.0) / self.tick_ns()
    }

    /// A write of the initial count: (re)starts the count, or stops it
    /// (0). Ignored in TSC-deadline mode.
    pub fn write_initial(&mut self, now: GuestNs, mode: TimerMode, value: u32) {
        if mode == TimerMode::TscDeadline {
            return;
        }
        self.initial_count = value;
        self.counting = (value != 0).then_some(Counting {
            anchor: now,
            count: value,
        });
    }

    /// A write of the divide configuration: the count goes on from where
    /// it stands at the new rate.
    pub fn write_divide(&mut self, now: GuestNs, mode: TimerMode, value: u32) {
        if self.counting.is_some() {
            let count = self.current_count(now, mode);
            self.counting = (count != 0).then_some(Counting { anchor: now, count });
        }
        self.divide_config = value & DIVIDE_BITS;
    }

    /// The current count register at `now` (0 in TSC-deadline mode).
    pub fn current_count(&self, now: GuestNs, mode: TimerMode) -> u32 {
        let Some(counting) = self.counting else {
            return 0;
        };
        let ticks = self.ticks_since(counting, now);
        let count = u64::from(counting.count);
        match mode {
            TimerMode::TscDeadline => 0,
            _ if ticks < count => u32::try_from(count - ticks).expect("below the count"),
            TimerMode::OneShot => 0,
            TimerMode::Periodic => {
                let initial = u64::from(self.initial_count.max(1));
                let into_period = (ticks - count) % initial;
                u32::try_from(initial - into_period).expect("within a period")
            }
        }
    }

    /// When the timer next fires, if it is armed.
    pub fn deadline(&self, mode: TimerMode) -> Option<GuestNs> {
        if mode == TimerMode::TscDeadline {
            return (self.tsc_deadline != 0)
                .then(|| GuestNs(self.tsc_deadline.saturating_mul(NS_PER_TSC_TICK)));
        }
        let counting = self.counting?;
        let until = u64::from(counting.count).saturating_mul(self.tick_ns());
        Some(GuestNs(counting.anchor.0.saturating_add(until)))
    }

    /// Fires the timer if its deadline is at or before `now`: true if it
    /// fired. A periodic count reloads (periods missed since fire once, as
    /// the interrupt request is one bit), a one-shot count and a TSC
    /// deadline are spent.
    pub fn expire(&mut self, now: GuestNs, mode: TimerMode) -> bool {
        let Some(deadline) = self.deadline(mode).filter(|at| *at <= now) else {
            return false;
        };
        match mode {
            TimerMode::TscDeadline => self.tsc_deadline = 0,
            TimerMode::OneShot => self.counting = None,
            TimerMode::Periodic => {
                let period = u64::from(self.initial_count.max(1)) * self.tick_ns();
                let missed = (now.0 - deadline.0) / period;
                let anchor = GuestNs(deadline.0 + missed * period);
                self.counting = Some(Counting {
                    anchor,
                    count: self.initial_count.max(1),
                });
                // (Saturated only at the end of time.)
                assert!(self
                    .deadline(mode)
                    .is_some_and(|next| next > now || next.0 == u64::MAX));
            }
        }
        true
    }

    /// IA32_TSC_DEADLINE as the guest reads it: 0 outside TSC-deadline mode.
    pub fn read_tsc_deadline(&self, mode: TimerMode) -> u64 {
        match mode {
            TimerMode::TscDeadline => self.tsc_deadline,
            _ => 0,
        }
    }

    /// A write of IA32_TSC_DEADLINE: arms (or with 0 disarms) the timer in
    /// TSC-deadline mode; ignored in the other modes.
    pub fn write_tsc_deadline(&mut self, mode: TimerMode, value: u64) {
        if mode == TimerMode::TscDeadline {
            self.tsc_deadline = value;
        }
    }

    /// The LVT timer's mode changed from `old` to `new`: a change into or
    /// out of TSC-deadline mode disarms the timer.
    pub fn mode_changed(&mut self, old: TimerMode, new: TimerMode) {
        if old != new && (old == TimerMode::TscDeadline || new == TimerMode::TscDeadline) {
            *self = ApicTimer {
                divide_config: self.divide_config,
                ..ApicTimer::default()
            };
        }
    }

    pub(crate) fn save(&self, w: &mut Writer) {
        w.u32(self.initial_count);
        w.u32(self.divide_config);
        match self.counting {
            None => w.u8(0),
            Some(counting) => {
                w.u8(1);
                w.u64(counting.anchor.0);
                w.u32(counting.count);
            }
        }
        w.u64(self.tsc_deadline);
    }

    pub(crate) fn restore(r: &mut Reader<'_>) -> Result<ApicTimer, DecodeError> {
        let initial_count = r.u32()?;
        let divide_config = r.u32()?;
        if divide_config & !DIVIDE_BITS != 0 {
            return Err(DecodeError::Invalid(format!(
                "APIC timer divide configuration {divide_config:#x}"
            )));
        }
        let counting = match r.u8()? {
            0 => None,
            1 => {
                let anchor = GuestNs(r.u64()?);
                let count = r.u32()?;
                if count == 0 {
                    return Err(DecodeError::Invalid("APIC timer counting from 0".into()));
                }
                Some(Counting { anchor, count })
            }
            other => {
                return Err(DecodeError::Invalid(format!(
                    "APIC timer counting flag {other}"
                )))
            }
        };
        if counting.is_some() && initial_count == 0 {
            return Err(DecodeError::Invalid(
                "APIC timer counting with an initial count of 0".into(),
            ));
        }
        Ok(ApicTimer {
            initial_count,
            divide_config,
            counting,
            tsc_deadline: r.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: TimerMode = TimerMode::OneShot;
    const PERIODIC: TimerMode = TimerMode::Periodic;
    const DEADLINE: TimerMode = TimerMode::TscDeadline;

    #[test]
    fn every_divide_configuration_selects_its_divisor() {
        let mut timer = ApicTimer::default();
        let table = [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ];
        for (config, divisor) in table {
            timer.write_divide(GuestNs(0), ONE, config | 0xf0);
            assert_eq!(timer.divisor(), divisor, "config {config:#b}");
            assert_eq!(timer.divide_config(), config, "bits 2 and 4..31 read 0");
        }
    }

    #[test]
    fn a_one_shot_count_falls_with_guest_time_and_stops_at_zero() {
        let mut timer = ApicTimer::default();
        timer.write_divide(GuestNs(0), ONE, 0b0001); // divide by 4
        timer.write_initial(GuestNs(1000), ONE, 100);
        assert_eq!(timer.current_count(GuestNs(1000), ONE), 100);
        assert_eq!(
            timer.current_count(GuestNs(1003), ONE),
            100,
            "a tick is 4 ns"
        );
        assert_eq!(timer.current_count(GuestNs(1004), ONE), 99);
        assert_eq!(timer.current_count(GuestNs(1396), ONE), 1);
        assert_eq!(timer.deadline(ONE), Some(GuestNs(1400)));
        assert!(!timer.expire(GuestNs(1399), ONE));
        assert!(timer.expire(GuestNs(1400), ONE));
        assert_eq!(timer.current_count(GuestNs(1400), ONE), 0);
        assert_eq!(timer.deadline(ONE), None, "spent");
        assert!(!timer.expire(GuestNs(9999), ONE), "fires once");
        assert_eq!(timer.initial_count(), 100, "the initial count stays");
    }

    #[test]
    fn a_periodic_count_reloads_and_missed_periods_fire_once() {
        let mut timer = ApicTimer::default();
        timer.write_divide(GuestNs(0), PERIODIC, 0b1011); // divide by 1
        timer.write_initial(GuestNs(0), PERIODIC, 10);
        assert_eq!(timer.deadline(PERIODIC), Some(GuestNs(10)));
        assert!(timer.expire(GuestNs(10), PERIODIC));
        assert_eq!(timer.deadline(PERIODIC), Some(GuestNs(20)));
        assert_eq!(timer.current_count(GuestNs(10), PERIODIC), 10);
        assert_eq!(timer.current_count(GuestNs(13), PERIODIC), 7);
        // Late by three and a half periods: one expiry, the next on the grid.
        assert!(timer.expire(GuestNs(55), PERIODIC));
        assert_eq!(timer.deadline(PERIODIC), Some(GuestNs(60)));
        assert_eq!(timer.current_count(GuestNs(55), PERIODIC), 5);
        assert!(!timer.expire(GuestNs(59), PERIODIC));
    }

    #[test]
    fn a_periodic_count_read_late_is_still_on_its_grid() {
        let mut timer = ApicTimer::default();
        timer.write_divide(GuestNs(0), PERIODIC, 0b1011);
        timer.write_initial(GuestNs(0), PERIODIC, 10);
        // Not expired by the engine yet: the count already reloaded.
        assert_eq!(timer.current_count(GuestNs(25), PERIODIC), 5);
        assert_eq!(timer.current_count(GuestNs(30), PERIODIC), 10);
    }

    #[test]
    fn a_new_divisor_goes_on_from_the_current_count() {
        let mut timer = ApicTimer::default();
        timer.write_divide(GuestNs(0), ONE, 0b1011); // by 1
        timer.write_initial(GuestNs(0), ONE, 100);
        timer.write_divide(GuestNs(40), ONE, 0b0000); // by 2, 60 left
        assert_eq!(timer.current_count(GuestNs(40), ONE), 60);
        assert_eq!(timer.current_count(GuestNs(60), ONE), 50);
        assert_eq!(timer.deadline(ONE), Some(GuestNs(160)));
    }

    #[test]
    fn writing_zero_stops_the_count() {
        let mut timer = ApicTimer::default();
        timer.write_initial(GuestNs(0), ONE, 100);
        timer.write_initial(GuestNs(5), ONE, 0);
        assert_eq!(timer.deadline(ONE), None);
        assert_eq!(timer.current_count(GuestNs(6), ONE), 0);
    }

    #[test]
    fn tsc_deadline_mode_fires_at_the_tsc_and_clears_the_msr() {
        let mut timer = ApicTimer::default();
        timer.write_tsc_deadline(ONE, 500);
        assert_eq!(
            timer.read_tsc_deadline(DEADLINE),
            0,
            "ignored outside the mode"
        );
        timer.write_tsc_deadline(DEADLINE, 500);
        assert_eq!(timer.read_tsc_deadline(DEADLINE), 500);
        assert_eq!(timer.read_tsc_deadline(ONE), 0, "reads 0 outside the mode");
        timer.write_initial(GuestNs(0), DEADLINE, 77);
        assert_eq!(timer.initial_count(), 0, "initial count writes are ignored");
        assert_eq!(timer.current_count(GuestNs(0), DEADLINE), 0);
        assert_eq!(timer.deadline(DEADLINE), Some(GuestNs(500)));
        assert!(!timer.expire(GuestNs(499), DEADLINE));
        assert!(timer.expire(GuestNs(501), DEADLINE));
        assert_eq!(timer.read_tsc_deadline(DEADLINE), 0);
        assert_eq!(timer.deadline(DEADLINE), None);
        // A deadline in the past fires at once.
        timer.write_tsc_deadline(DEADLINE, 100);
        assert!(timer.expire(GuestNs(600), DEADLINE));
        assert_eq!(tsc_at(GuestNs(600)), 600);
    }

    #[test]
    fn entering_or_leaving_tsc_deadline_mode_disarms() {
        let mut timer = ApicTimer::default();
        timer.write_initial(GuestNs(0), ONE, 100);
        timer.mode_changed(ONE, PERIODIC);
        assert!(
            timer.deadline(PERIODIC).is_some(),
            "one-shot to periodic keeps counting"
        );
        timer.mode_changed(PERIODIC, DEADLINE);
        assert_eq!(timer.deadline(DEADLINE), None);
        timer.write_tsc_deadline(DEADLINE, 50);
        timer.mode_changed(DEADLINE, ONE);
        assert_eq!(timer.read_tsc_deadline(DEADLINE), 0);
        assert_eq!(timer.deadline(ONE), None);
    }

    #[test]
    fn save_restore_mid_count_reads_the_same_count() {
        let mut timer = ApicTimer::default();
        timer.write_divide(GuestNs(0), PERIODIC, 0b0010);
        timer.write_initial(GuestNs(100), PERIODIC, 1000);
        let mut w = Writer::new();
        timer.save(&mut w);
        let bytes = w.into_bytes();
        let restored = ApicTimer::restore(&mut Reader::new(&bytes)).expect("decodes");
        assert_eq!(restored, timer);
        for now in [100, 4_000, 8_100, 12_345] {
            assert_eq!(
                restored.current_count(GuestNs(now), PERIODIC),
                timer.current_count(GuestNs(now), PERIODIC)
            );
        }
        let mut bad = bytes.clone();
        bad[4] = 0x04; // divide bit 2 is not a bit
        assert!(ApicTimer::restore(&mut Reader::new(&bad)).is_err());
        let mut zero = bytes;
        zero[17..21].copy_from_slice(&0u32.to_le_bytes());
        assert!(ApicTimer::restore(&mut Reader::new(&zero)).is_err());
    }
}
