//! One vCPU's local APIC in xAPIC mode: the register file of the APIC page
//! (offsets as in the Intel SDM vol. 3, "Advanced Programmable Interrupt
//! Controller"), the priority logic (IRR, ISR, TPR, PPR), EOI, the LVT and
//! the timer. What an ICR write sends leaves as a [`Message`] for the
//! platform to route: a local APIC knows no other.
//!
//! Guest writes never panic: reserved bits are dropped, read-only
//! registers ignore writes, a reserved offset sets ESR's illegal register
//! address bit, as on hardware.

use super::message::{Message, TriggerMode};
use super::timer::{ApicTimer, TimerMode};
use super::vectors::{Vector, VectorSet};
use crate::codec::{DecodeError, Reader, Writer};
use crate::units::GuestNs;

/// Where the APIC page is (the only base this platform decodes).
pub const APIC_BASE_DEFAULT: u64 = 0xfee0_0000;
/// The APIC page's size.
pub const APIC_PAGE_BYTES: u64 = 0x1000;
/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1b;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// IA32_APIC_BASE bit 8: this is the bootstrap processor.
pub const APIC_BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE bit 10: x2APIC mode (not offered: setting it is #GP).
pub const APIC_BASE_X2APIC: u64 = 1 << 10;
/// IA32_APIC_BASE bit 11: the APIC is enabled.
pub const APIC_BASE_ENABLE: u64 = 1 << 11;
/// The version register: version 0x14 (an integrated APIC), six LVT
/// entries (timer, thermal, performance, LINT0, LINT1, error; no CMCI),
/// no EOI-broadcast suppression.
pub const VERSION: u32 = 0x14 | (5 << 16);

/// Register offsets in the APIC page.
pub mod reg {
    /// Local APIC ID.
    pub const ID: u32 = 0x020;
    /// Version.
    pub const VERSION: u32 = 0x030;
    /// Task priority.
    pub const TPR: u32 = 0x080;
    /// Arbitration priority.
    pub const APR: u32 = 0x090;
    /// Processor priority.
    pub const PPR: u32 = 0x0a0;
    /// End of interrupt.
    pub const EOI: u32 = 0x0b0;
    /// Remote read.
    pub const RRD: u32 = 0x0c0;
    /// Logical destination.
    pub const LDR: u32 = 0x0d0;
    /// Destination format.
    pub const DFR: u32 = 0x0e0;
    /// Spurious interrupt vector.
    pub const SVR: u32 = 0x0f0;
    /// In-service, 8 registers.
    pub const ISR: u32 = 0x100;
    /// Trigger mode, 8 registers.
    pub const TMR: u32 = 0x180;
    /// Interrupt request, 8 registers.
    pub const IRR: u32 = 0x200;
    /// Error status.
    pub const ESR: u32 = 0x280;
    /// Interrupt command, low half (a write sends).
    pub const ICR_LOW: u32 = 0x300;
    /// Interrupt command, high half (destination).
    pub const ICR_HIGH: u32 = 0x310;
    /// LVT timer; thermal, performance, LINT0, LINT1 and error follow,
    /// 0x10 apart.
    pub const LVT_TIMER: u32 = 0x320;
    /// LVT thermal sensor.
    pub const LVT_THERMAL: u32 = 0x330;
    /// LVT performance counter.
    pub const LVT_PERF: u32 = 0x340;
    /// LVT LINT0.
    pub const LVT_LINT0: u32 = 0x350;
    /// LVT LINT1.
    pub const LVT_LINT1: u32 = 0x360;
    /// LVT error.
    pub const LVT_ERROR: u32 = 0x370;
    /// Timer initial count.
    pub const TIMER_INITIAL: u32 = 0x380;
    /// Timer current count.
    pub const TIMER_CURRENT: u32 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u32 = 0x3e0;
}

/// ESR bits this APIC reports.
pub mod esr {
    /// An ICR write named a vector below 16.
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    /// An interrupt with a vector below 16 arrived (or an LVT fired one).
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    /// An access to a reserved offset of the APIC page.
    pub const ILLEGAL_REGISTER: u32 = 1 << 7;
    pub(crate) const ALL: u32 = SEND_ILLEGAL_VECTOR | RECEIVE_ILLEGAL_VECTOR | ILLEGAL_REGISTER;
}

/// An LVT entry's mask bit.
pub const LVT_MASKED: u32 = 1 << 16;
/// SVR bit 8: the APIC is software-enabled.
pub const SVR_ENABLED: u32 = 1 << 8;
const SVR_BITS: u32 = 0x3ff;
const LVT_COUNT: usize = 6;
const LVT_TIMER: usize = 0;
const LVT_ERROR: usize = 5;
/// The writable bits of each LVT entry, in register order: timer (vector,
/// mask, mode), thermal and performance (vector, delivery mode, mask),
/// LINT0 and LINT1 (and polarity, trigger mode), error (vector, mask).
const LVT_BITS: [u32; LVT_COUNT] = [
    0x0007_00ff,
    0x0001_07ff,
    0x0001_07ff,
    0x0001_a7ff,
    0x0001_a7ff,
    0x0001_00ff,
];
/// The ICR's writable low bits: vector, delivery mode, destination mode,
/// level, trigger mode, shorthand. Delivery status (bit 12) reads 0: a
/// message is delivered as it is written.
const ICR_LOW_BITS: u32 = 0x000c_cfff;
const DFR_RESERVED_ONES: u32 = 0x0fff_ffff;

/// Whether this processor boots the machine or waits to be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processor {
    /// The bootstrap processor (IA32_APIC_BASE.BSP).
    Bootstrap,
    /// An application processor.
    Application,
}

/// Whether the vCPU runs or, after an INIT, waits for a start-up IPI
/// (only the first SIPI after an INIT starts it: Linux sends two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    /// Running: a start-up IPI is ignored.
    Running,
    /// Waiting for a start-up IPI.
    WaitingForSipi,
}

/// What a register write asks of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Nothing beyond this APIC.
    Nothing,
    /// An ICR write: send this message.
    Send(Message),
    /// An EOI of a level-triggered vector: broadcast it to the I/O APIC.
    EoiBroadcast(Vector),
}

/// A write of IA32_APIC_BASE the processor refuses with #GP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("IA32_APIC_BASE write {0:#x} sets a reserved bit or x2APIC mode")]
pub struct ApicBaseRefused(pub u64);

/// One local APIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalApic {
    id: u8,
    apic_base: u64,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: VectorSet,
    tmr: VectorSet,
    irr: VectorSet,
    /// ESR as the guest reads it: the errors latched by its last write.
    esr: u32,
    /// Errors since the last ESR write.
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    lvt: [u32; LVT_COUNT],
    timer: ApicTimer,
    startup: Startup,
}

impl LocalApic {
    /// A local APIC after power-up: ID `id`, enabled in IA32_APIC_BASE,
    /// software-disabled (SVR 0xff), every LVT entry masked. An
    /// application processor waits for a start-up IPI only if `startup`
    /// says so (a machine may start its vCPUs running).
    pub fn new(id: u8, processor: Processor, startup: Startup) -> LocalApic {
        let bsp = match processor {
            Processor::Bootstrap => APIC_BASE_BSP,
            Processor::Application => 0,
        };
        LocalApic::power_up(id, APIC_BASE_DEFAULT | APIC_BASE_ENABLE | bsp, startup)
    }

    /// The power-up values of every register but the ID and IA32_APIC_BASE.
    fn power_up(id: u8, apic_base: u64, startup: Startup) -> LocalApic {
        LocalApic {
            id,
            apic_base,
            tpr: 0,
            ldr: 0,
            dfr: u32::MAX,
            svr: 0xff,
            isr: VectorSet::default(),
            tmr: VectorSet::default(),
            irr: VectorSet::default(),
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [LVT_MASKED; LVT_COUNT],
            timer: ApicTimer::default(),
            startup,
        }
    }

    /// Back to power-up values but the ID and IA32_APIC_BASE (an INIT, or
    /// the APIC disabled in IA32_APIC_BASE).
    fn reset_registers(&mut self) {
        *self = LocalApic::power_up(self.id, self.apic_base, self.startup);
    }

    /// The ID register's APIC ID (bits 31:24).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The bootstrap processor (IA32_APIC_BASE.BSP) or an application
    /// processor.
    pub fn processor(&self) -> Processor {
        match self.apic_base & APIC_BASE_BSP {
            0 => Processor::Application,
            _ => Processor::Bootstrap,
        }
    }

    /// Running, or waiting for a start-up IPI.
    pub fn startup(&self) -> Startup {
        self.startup
    }

    /// Whether IA32_APIC_BASE enables the APIC (its page is decoded).
    pub fn hardware_enabled(&self) -> bool {
        self.apic_base & APIC_BASE_ENABLE != 0
    }

    /// Whether the APIC is enabled in IA32_APIC_BASE and in SVR.
    pub fn enabled(&self) -> bool {
        self.hardware_enabled() && self.svr & SVR_ENABLED != 0
    }

    /// The task priority register.
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// The interrupt request register.
    pub fn irr(&self) -> &VectorSet {
        &self.irr
    }

    /// The in-service register.
    pub fn isr(&self) -> &VectorSet {
        &self.isr
    }

    /// The trigger mode register.
    pub fn tmr(&self) -> &VectorSet {
        &self.tmr
    }

    /// The processor priority: the TPR, or the class of the highest
    /// vector in service if that is higher.
    pub fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().map_or(0, |v| v.0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The arbitration priority (for lowest-priority delivery).
    fn apr(&self) -> u8 {
        let irrv = self.irr.highest().map_or(0, |v| v.0);
        let isrv = self.isr.highest().map_or(0, |v| v.0);
        let top = irrv.max(isrv) & 0xf0;
        if self.tpr >> 4 >= top >> 4 {
            self.tpr
        } else {
            top
        }
    }

    /// The vector the processor would take now: the highest requested
    /// whose class is above the processor priority.
    pub fn pending(&self) -> Option<Vector> {
        if !self.enabled() {
            return None;
        }
        self.irr.highest().filter(|v| v.class() > self.ppr() >> 4)
    }

    /// The processor takes the pending vector (INTA): it moves from IRR to
    /// ISR.
    pub fn acknowledge(&mut self) -> Option<Vector> {
        let vector = self.pending()?;
        self.irr.remove(vector);
        self.isr.insert(vector);
        assert!(self.isr.contains(vector));
        Some(vector)
    }

    /// The processor took `vector`, which the engine offered it when it
    /// was pending (a later, higher request changes nothing about what
    /// the processor already took): IRR to ISR. False if it was not
    /// requested (the engine's own raise, or a stale offer).
    pub fn taken(&mut self, vector: Vector) -> bool {
        if !self.irr.contains(vector) {
            return false;
        }
        self.irr.remove(vector);
        self.isr.insert(vector);
        true
    }

    /// Takes a fixed interrupt into IRR (TMR set for a level-triggered
    /// one). A vector below 16 is refused with ESR's receive-illegal
    /// bit; a software-disabled APIC drops fixed interrupts. True if
    /// taken.
    pub fn accept(&mut self, vector: Vector, trigger: TriggerMode) -> bool {
        if !vector.is_legal() {
            self.error(esr::RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        if !self.enabled() {
            return false;
        }
        self.irr.insert(vector);
        match trigger {
            TriggerMode::Level => self.tmr.insert(vector),
            TriggerMode::Edge => self.tmr.remove(vector),
        }
        true
    }

    /// Records an error and, if the LVT error entry is unmasked, requests
    /// its interrupt.
    fn error(&mut self, bits: u32) {
        let new = bits & !self.esr_pending;
        self.esr_pending |= bits;
        let lvt = self.lvt[LVT_ERROR];
        if new != 0 && lvt & LVT_MASKED == 0 && self.enabled() {
            let vector = Vector(lvt as u8);
            if vector.is_legal() {
                self.irr.insert(vector);
                self.tmr.remove(vector);
            } else {
                self.esr_pending |= esr::RECEIVE_ILLEGAL_VECTOR;
            }
        }
    }

    /// An EOI: the highest vector in service is done. For a
    /// level-triggered one, the vector to broadcast to the I/O APIC.
    fn eoi(&mut self) -> Option<Vector> {
        let vector = self.isr.highest()?;
        self.isr.remove(vector);
        self.tmr.contains(vector).then_some(vector)
    }

    fn timer_mode(&self) -> TimerMode {
        TimerMode::of_lvt(self.lvt[LVT_TIMER])
    }

    /// When the timer next fires, if armed (masked or not: a masked timer
    /// still counts and is spent).
    pub fn next_deadline(&self) -> Option<GuestNs> {
        if !self.hardware_enabled() {
            return None;
        }
        self.timer.deadline(self.timer_mode())
    }

    /// Fires the timer if it is due at `now`: its vector goes to IRR
    /// unless its LVT entry is masked.
    pub fn advance(&mut self, now: GuestNs) {
        if !self.hardware_enabled() || !self.timer.expire(now, self.timer_mode()) {
            return;
        }
        let lvt = self.lvt[LVT_TIMER];
        if lvt & LVT_MASKED == 0 {
            self.accept(Vector(lvt as u8), TriggerMode::Edge);
        }
    }

    /// Reads the 32-bit register at `offset` (16-byte aligned) at `now`.
    pub fn read(&mut self, now: GuestNs, offset: u32) -> u32 {
        self.advance(now);
        let index = |base: u32| ((offset - base) >> 4) as usize;
        match offset {
            reg::ID => u32::from(self.id) << 24,
            reg::VERSION => VERSION,
            reg::TPR => u32::from(self.tpr),
            reg::APR => u32::from(self.apr()),
            reg::PPR => u32::from(self.ppr()),
            reg::EOI | reg::RRD => 0,
            reg::LDR => self.ldr,
            reg::DFR => self.dfr,
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr.register(index(reg::ISR)),
            0x180..=0x1f0 => self.tmr.register(index(reg::TMR)),
            0x200..=0x270 => self.irr.register(index(reg::IRR)),
            reg::ESR => self.esr,
            reg::ICR_LOW => self.icr_low,
            reg::ICR_HIGH => self.icr_high,
            0x320..=0x370 => self.lvt[index(reg::LVT_TIMER)],
            reg::TIMER_INITIAL => self.timer.initial_count(),
            reg::TIMER_CURRENT => self.timer.current_count(now, self.timer_mode()),
            reg::TIMER_DIVIDE => self.timer.divide_config(),
            _ => {
                self.error(esr::ILLEGAL_REGISTER);
                0
            }
        }
    }

    /// Writes `value` to the 32-bit register at `offset` (16-byte
    /// aligned) at `now`.
    pub fn write(&mut self, now: GuestNs, offset: u32, value: u32) -> Written {
        self.advance(now);
        match offset {
            reg::ID => self.id = (value >> 24) as u8,
            reg::TPR => self.tpr = value as u8,
            reg::EOI => {
                if let Some(vector) = self.eoi() {
                    return Written::EoiBroadcast(vector);
                }
            }
            reg::LDR => self.ldr = value & 0xff00_0000,
            reg::DFR => self.dfr = value | DFR_RESERVED_ONES,
            reg::SVR => self.write_svr(value),
            reg::ESR => {
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            reg::ICR_LOW => return self.write_icr(value),
            reg::ICR_HIGH => self.icr_high = value & 0xff00_0000,
            0x320..=0x370 => self.write_lvt(((offset - reg::LVT_TIMER) >> 4) as usize, value),
            reg::TIMER_INITIAL => self.timer.write_initial(now, self.timer_mode(), value),
            reg::TIMER_DIVIDE => self.timer.write_divide(now, self.timer_mode(), value),
            reg::VERSION | reg::APR | reg::PPR | reg::RRD | reg::TIMER_CURRENT => {}
            0x100..=0x270 => {}
            _ => self.error(esr::ILLEGAL_REGISTER),
        }
        Written::Nothing
    }

    fn write_svr(&mut self, value: u32) {
        self.svr = value & SVR_BITS;
        if self.svr & SVR_ENABLED == 0 {
            for entry in &mut self.lvt {
                *entry |= LVT_MASKED;
            }
        }
    }

    fn write_lvt(&mut self, index: usize, value: u32) {
        let Some(bits) = LVT_BITS.get(index) else {
            return;
        };
        let mut value = value & bits;
        if self.svr & SVR_ENABLED == 0 {
            value |= LVT_MASKED;
        }
        if index == LVT_TIMER {
            let old = self.timer_mode();
            self.timer.mode_changed(old, TimerMode::of_lvt(value));
        }
        self.lvt[index] = value;
    }

    fn write_icr(&mut self, value: u32) -> Written {
        self.icr_low = value & ICR_LOW_BITS;
        let message = Message::of_icr(self.icr_low, self.icr_high);
        use super::message::DeliveryMode::{Fixed, LowestPriority};
        if matches!(message.delivery, Fixed | LowestPriority) && !message.vector.is_legal() {
            self.error(esr::SEND_ILLEGAL_VECTOR);
            return Written::Nothing;
        }
        Written::Send(message)
    }

    /// Whether this APIC is one of a logical destination `dest`: in the
    /// flat model (DFR 1111b) a bit of the LDR's byte is set in `dest`; in
    /// the cluster model (0000b) the cluster matches and a member bit is set.
    pub fn logical_match(&self, dest: u8) -> bool {
        if dest == 0xff {
            return true;
        }
        let ldr = (self.ldr >> 24) as u8;
        match self.dfr >> 28 {
            0b1111 => ldr & dest != 0,
            0b0000 => ldr >> 4 == dest >> 4 && ldr & dest & 0x0f != 0,
            _ => false,
        }
    }

    /// The arbitration priority lowest-priority delivery compares.
    pub fn arbitration_priority(&self) -> u8 {
        self.apr()
    }

    /// An INIT: every register back to its power-up value but the ID; an
    /// application processor waits for a start-up IPI (the bootstrap
    /// processor restarts at the reset vector instead).
    pub fn init(&mut self) {
        self.reset_registers();
        if self.apic_base & APIC_BASE_BSP == 0 {
            self.startup = Startup::WaitingForSipi;
        }
    }

    /// A start-up IPI: true if it starts the vCPU (it was waiting).
    pub fn start(&mut self) -> bool {
        let waiting = self.startup == Startup::WaitingForSipi;
        self.startup = Startup::Running;
        waiting
    }

    /// IA32_APIC_BASE.
    pub fn apic_base(&self) -> u64 {
        self.apic_base
    }

    /// A write of IA32_APIC_BASE: only the enable bit changes (the base
    /// stays at [`APIC_BASE_DEFAULT`], BSP is read-only); clearing it
    /// resets the APIC's registers. x2APIC mode or a bit beyond the
    /// physical address width is refused (#GP).
    pub fn write_apic_base(&mut self, value: u64) -> Result<(), ApicBaseRefused> {
        const RESERVED: u64 = !((1u64 << 52) - 1) | 0xff | (1 << 9);
        if value & (RESERVED | APIC_BASE_X2APIC) != 0 {
            return Err(ApicBaseRefused(value));
        }
        let was_enabled = self.hardware_enabled();
        self.apic_base = (self.apic_base & !APIC_BASE_ENABLE) | (value & APIC_BASE_ENABLE);
        if was_enabled && !self.hardware_enabled() {
            self.reset_registers();
        }
        Ok(())
    }

    /// IA32_TSC_DEADLINE as read.
    pub fn tsc_deadline(&self) -> u64 {
        self.timer.read_tsc_deadline(self.timer_mode())
    }

    /// A write of IA32_TSC_DEADLINE at `now`.
    pub fn write_tsc_deadline(&mut self, now: GuestNs, value: u64) {
        self.advance(now);
        self.timer.write_tsc_deadline(self.timer_mode(), value);
    }

    pub(crate) fn save(&self, w: &mut Writer) {
        w.u8(self.id);
        w.u64(self.apic_base);
        w.u8(self.tpr);
        w.u32(self.ldr);
        w.u32(self.dfr);
        w.u32(self.svr);
        self.isr.save(w);
        self.tmr.save(w);
        self.irr.save(w);
        w.u32(self.esr);
        w.u32(self.esr_pending);
        w.u32(self.icr_low);
        w.u32(self.icr_high);
        for entry in self.lvt {
            w.u32(entry);
        }
        self.timer.save(w);
        w.u8(match self.startup {
            Startup::Running => 0,
            Startup::WaitingForSipi => 1,
        });
    }

    pub(crate) fn restore(r: &mut Reader<'_>) -> Result<LocalApic, DecodeError> {
        let invalid = |what: &str, value: u64| {
            Err(DecodeError::Invalid(format!(
                "local APIC {what} {value:#x}"
            )))
        };
        let id = r.u8()?;
        let apic_base = r.u64()?;
        if apic_base & !(APIC_BASE_ENABLE | APIC_BASE_BSP) != APIC_BASE_DEFAULT {
            return invalid("IA32_APIC_BASE", apic_base);
        }
        let tpr = r.u8()?;
        let ldr = r.u32()?;
        let dfr = r.u32()?;
        let svr = r.u32()?;
        if ldr & 0x00ff_ffff != 0 || dfr & DFR_RESERVED_ONES != DFR_RESERVED_ONES {
            return invalid("LDR/DFR", u64::from(ldr) << 32 | u64::from(dfr));
        }
        if svr & !SVR_BITS != 0 {
            return invalid("SVR", u64::from(svr));
        }
        let (isr, tmr, irr) = (
            VectorSet::restore(r)?,
            VectorSet::restore(r)?,
            VectorSet::restore(r)?,
        );
        let (esr, esr_pending) = (r.u32()?, r.u32()?);
        if (esr | esr_pending) & !esr::ALL != 0 {
            return invalid("ESR", u64::from(esr | esr_pending));
        }
        let icr_low = r.u32()?;
        let icr_high = r.u32()?;
        if icr_low & !ICR_LOW_BITS != 0 || icr_high & 0x00ff_ffff != 0 {
            return invalid("ICR", u64::from(icr_high) << 32 | u64::from(icr_low));
        }
        let mut lvt = [0; LVT_COUNT];
        for (entry, bits) in lvt.iter_mut().zip(LVT_BITS) {
            *entry = r.u32()?;
            if *entry & !bits != 0 {
                return invalid("LVT entry", u64::from(*entry));
            }
        }
        let timer = ApicTimer::restore(r)?;
        let startup = match r.u8()? {
            0 => Startup::Running,
            1 => Startup::WaitingForSipi,
            other => return invalid("start-up state", u64::from(other)),
        };
        Ok(LocalApic {
            id,
            apic_base,
            tpr,
            ldr,
            dfr,
            svr,
            isr,
            tmr,
            irr,
            esr,
            esr_pending,
            icr_low,
            icr_high,
            lvt,
            timer,
            startup,
        })
    }
}
