//! The PC platform an unmodified Linux kernel expects: a local APIC per
//! vCPU (xAPIC page at 0xfee0_0000, IA32_APIC_BASE, the timer with
//! IA32_TSC_DEADLINE), the I/O APIC at 0xfec0_0000, a 16550A UART on
//! COM1 and the CMOS real-time clock ([`rtc`]). Engine-agnostic and deterministic: every input carries guest
//! time or none, nothing reads a clock, nothing iterates a hash map.
//!
//! The engine drives it:
//! - MMIO of the two APIC pages: [`Pc::mmio_read`], [`Pc::mmio_write`];
//!   port I/O of COM1 and the RTC through the [`crate::DeviceBus`], which
//!   moves the UART's output into its console;
//! - RDMSR/WRMSR of IA32_APIC_BASE and IA32_TSC_DEADLINE: [`Pc::msr_read`],
//!   [`Pc::msr_write`]; CPUID leaf 1: [`Pc::cpuid`];
//! - time: [`Pc::advance`] fires the timers due, [`Pc::next_deadline`]
//!   says when the next one is, so a run slice ends there;
//! - interrupts: [`Pc::pending`] is the vector a vCPU would take at an
//!   instruction boundary, [`Pc::acknowledge`] moves it from IRR to ISR
//!   when the engine delivers it;
//! - INIT, start-up IPIs and NMIs are for the engine to apply to a vCPU:
//!   [`Pc::poll_action`] after every access that may send one, the
//!   registers they set in [`startup`]; a vCPU that
//!   [`Pc::waits_for_startup`] does not run.

pub mod ioapic;
pub mod lapic;
pub mod message;
pub mod rtc;
pub mod startup;
pub mod timer;
pub mod uart;
pub mod vectors;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use crate::codec::{DecodeError, Reader, Writer};
use crate::devices::IoContext;
use crate::units::{Gpa, GuestNs, VcpuId};
use ioapic::{IoApic, Line, IOAPIC_BASE, IOAPIC_WINDOW_BYTES, IOREGSEL};
use lapic::{LocalApic, Processor, Startup, Written, APIC_BASE_DEFAULT, APIC_PAGE_BYTES};
use message::{DeliveryMode, Destination, Level, Message, TriggerMode};
use rtc::{Rtc, UnixSeconds, DEFAULT_EPOCH, RTC_DATA_PORT, RTC_INDEX_PORT};
use uart::{Uart, UartEffect, COM1_BASE, COM1_IRQ, COM1_PORTS};
use vectors::Vector;

/// Most INIT, start-up and NMI actions queued for the engine; more are
/// dropped and counted (the engine polls after every access).
pub const ACTIONS_MAX: usize = 64;
/// Most vCPUs a platform has: xAPIC IDs are a byte and 0xff broadcasts.
pub const PC_VCPUS_MAX: u16 = 255;

/// The platform state's parts after its first layout (local APICs, I/O
/// APIC, UART, actions, stats), each a tag byte and a length-prefixed
/// blob, in any order, each at most once: a state of an older layout has
/// none of them and still decodes, and a part added later (a device's
/// state) is one more tag, not a change to the others.
/// The CMOS real-time clock's part.
pub const PART_RTC: u8 = 1;

/// What the engine must do to a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcAction {
    /// INIT: the vCPU resets; an application processor then waits for a
    /// start-up IPI, the bootstrap processor restarts at the reset vector.
    Init {
        /// The vCPU.
        vcpu: VcpuId,
    },
    /// A start-up IPI to a waiting vCPU: it starts in real mode at
    /// [`PcAction::start_gpa`] (CS = vector << 8, IP = 0).
    Startup {
        /// The vCPU.
        vcpu: VcpuId,
        /// The SIPI vector: the start page.
        vector: u8,
    },
    /// A non-maskable interrupt.
    Nmi {
        /// The vCPU.
        vcpu: VcpuId,
    },
}

impl PcAction {
    /// For a start-up IPI, where the vCPU starts: `vector << 12`.
    pub fn start_gpa(&self) -> Option<Gpa> {
        match self {
            PcAction::Startup { vector, .. } => Some(Gpa(u64::from(*vector) << 12)),
            _ => None,
        }
    }
}

/// How the platform answers a WRMSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrWrite {
    /// Done.
    Done,
    /// The platform refuses the value: the engine raises #GP.
    GeneralProtection,
    /// Not one of the platform's MSRs.
    NotMine,
}

/// The registers CPUID returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidRegs {
    /// eax
    pub eax: u32,
    /// ebx
    pub ebx: u32,
    /// ecx
    pub ecx: u32,
    /// edx
    pub edx: u32,
}

/// CPUID.1:EDX bit 9: an on-chip APIC.
pub const CPUID_1_EDX_APIC: u32 = 1 << 9;
/// CPUID.1:ECX bit 21: x2APIC (not offered).
pub const CPUID_1_ECX_X2APIC: u32 = 1 << 21;
/// CPUID.1:ECX bit 24: the TSC-deadline timer, which lets Linux skip
/// calibrating the APIC timer.
pub const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Counts of what the platform ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PcStats {
    /// Messages of a kind not modelled (SMI, ExtINT, reserved), or a
    /// start-up IPI to a running vCPU.
    pub messages_ignored: u64,
    /// Actions dropped because [`ACTIONS_MAX`] were queued.
    pub actions_dropped: u64,
    /// APIC page writes that were not 32-bit at a register.
    pub writes_ignored: u64,
}

/// The platform: local APICs, I/O APIC, UART, RTC.
#[derive(Debug, PartialEq)]
pub struct Pc {
    lapics: Vec<LocalApic>,
    ioapic: IoApic,
    uart: Uart,
    rtc: Rtc,
    actions: VecDeque<PcAction>,
    stats: PcStats,
}

impl Pc {
    /// A platform for `vcpus` vCPUs after power-up: vCPU 0 is the
    /// bootstrap processor, APIC IDs are vCPU indices, and the other vCPUs
    /// are in `aps` (waiting for a start-up IPI, as on hardware, or
    /// running, as Lockstep's own guests start). Its RTC reads
    /// [`DEFAULT_EPOCH`] at guest time 0.
    pub fn new(vcpus: u16, aps: Startup) -> Pc {
        assert!((1..=PC_VCPUS_MAX).contains(&vcpus), "{vcpus} vCPUs");
        let lapics = (0..vcpus)
            .map(|v| {
                let id = u8::try_from(v).expect("below 255");
                match v {
                    0 => LocalApic::new(id, Processor::Bootstrap, Startup::Running),
                    _ => LocalApic::new(id, Processor::Application, aps),
                }
            })
            .collect();
        Pc {
            lapics,
            ioapic: IoApic::default(),
            uart: Uart::default(),
            rtc: Rtc::new(DEFAULT_EPOCH),
            actions: VecDeque::new(),
            stats: PcStats::default(),
        }
    }

    /// This platform with its RTC reading `epoch` at guest time 0.
    pub fn with_rtc_epoch(mut self, epoch: UnixSeconds) -> Pc {
        self.rtc = Rtc::new(epoch);
        self
    }

    /// How many vCPUs (local APICs).
    pub fn vcpus(&self) -> u16 {
        u16::try_from(self.lapics.len()).expect("at most 255 vCPUs")
    }

    /// vCPU `vcpu`'s local APIC.
    pub fn lapic(&self, vcpu: VcpuId) -> &LocalApic {
        &self.lapics[self.index(vcpu)]
    }

    /// The I/O APIC.
    pub fn ioapic(&self) -> &IoApic {
        &self.ioapic
    }

    /// The real-time clock.
    pub fn rtc(&self) -> &Rtc {
        &self.rtc
    }

    /// What the platform ignored.
    pub fn stats(&self) -> PcStats {
        self.stats
    }

    fn index(&self, vcpu: VcpuId) -> usize {
        let v = usize::from(vcpu.0);
        assert!(v < self.lapics.len(), "vCPU {v} of {}", self.lapics.len());
        v
    }

    /// Whether `gpa` is in one of the platform's MMIO pages.
    pub fn decodes(gpa: Gpa) -> bool {
        let apic = APIC_BASE_DEFAULT..APIC_BASE_DEFAULT + APIC_PAGE_BYTES;
        let ioapic = IOAPIC_BASE..IOAPIC_BASE + IOAPIC_WINDOW_BYTES;
        apic.contains(&gpa.0) || ioapic.contains(&gpa.0)
    }

    /// A guest read of `data.len()` bytes at `gpa`: true if the platform
    /// decodes it. Registers are 32 bits in 16-byte slots; the rest of a
    /// slot reads 0. A hardware-disabled local APIC's page reads all ones.
    pub fn mmio_read(&mut self, ctx: IoContext, gpa: Gpa, data: &mut [u8]) -> bool {
        let v = self.index(ctx.vcpu);
        if let Some(offset) = gpa.0.checked_sub(APIC_BASE_DEFAULT) {
            if offset < APIC_PAGE_BYTES {
                let lapic = &mut self.lapics[v];
                if !lapic.hardware_enabled() {
                    data.fill(0xff);
                    return true;
                }
                read_slots(offset, data, |slot| lapic.read(ctx.now, slot));
                return true;
            }
        }
        if let Some(offset) = gpa.0.checked_sub(IOAPIC_BASE) {
            if offset < IOAPIC_WINDOW_BYTES {
                let ioapic = &self.ioapic;
                read_slots(offset, data, |slot| ioapic.read(slot));
                return true;
            }
        }
        false
    }

    /// A guest write of `data` at `gpa`: true if the platform decodes it.
    /// Only 32-bit (or wider: the low 32 bits) writes at a register's
    /// offset take effect, and a byte write of IOREGSEL.
    pub fn mmio_write(&mut self, ctx: IoContext, gpa: Gpa, data: &[u8]) -> bool {
        let v = self.index(ctx.vcpu);
        let value = data
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        if let Some(offset) = gpa.0.checked_sub(APIC_BASE_DEFAULT) {
            if offset < APIC_PAGE_BYTES {
                match value.filter(|_| offset % 16 == 0) {
                    Some(value) if self.lapics[v].hardware_enabled() => {
                        let written = self.lapics[v].write(ctx.now, offset as u32, value);
                        self.apply(v, written);
                    }
                    Some(_) => {}
                    None => self.stats.writes_ignored += 1,
                }
                return true;
            }
        }
        if let Some(offset) = gpa.0.checked_sub(IOAPIC_BASE) {
            if offset < IOAPIC_WINDOW_BYTES {
                let value = match (value, data.first()) {
                    (Some(value), _) => Some(value),
                    (None, Some(byte)) if offset == u64::from(IOREGSEL) => Some(u32::from(*byte)),
                    _ => None,
                };
                match value.filter(|_| offset % 16 == 0) {
                    Some(value) => {
                        let mut out = Vec::new();
                        self.ioapic.write(offset as u32, value, &mut out);
                        self.deliver_all(out);
                    }
                    None => self.stats.writes_ignored += 1,
                }
                return true;
            }
        }
        false
    }

    fn apply(&mut self, from: usize, written: Written) {
        match written {
            Written::Nothing => {}
            Written::Send(message) => self.deliver(Some(from), message),
            Written::EoiBroadcast(vector) => {
                let mut out = Vec::new();
                self.ioapic.eoi(vector, &mut out);
                self.deliver_all(out);
            }
        }
    }

    fn deliver_all(&mut self, messages: Vec<Message>) {
        for message in messages {
            self.deliver(None, message);
        }
    }

    /// The local APICs `destination` names, in vCPU order; `from` is the
    /// sender's (none for the I/O APIC). A hardware-disabled APIC hears
    /// nothing.
    fn targets(&self, from: Option<usize>, destination: Destination) -> Vec<usize> {
        let all = (0..self.lapics.len()).filter(|v| self.lapics[*v].hardware_enabled());
        match destination {
            Destination::Physical(0xff) | Destination::All => all.collect(),
            Destination::Physical(id) => all.filter(|v| self.lapics[*v].id() == id).collect(),
            Destination::Logical(dest) => all
                .filter(|v| self.lapics[*v].logical_match(dest))
                .collect(),
            Destination::SelfOnly => all.filter(|v| Some(*v) == from).collect(),
            Destination::AllButSelf => all.filter(|v| Some(*v) != from).collect(),
        }
    }

    /// Routes one message to the local APICs it names.
    fn deliver(&mut self, from: Option<usize>, message: Message) {
        let targets = self.targets(from, message.destination);
        match message.delivery {
            DeliveryMode::Fixed => {
                for v in targets {
                    self.lapics[v].accept(message.vector, message.trigger);
                }
            }
            DeliveryMode::LowestPriority => {
                // The lowest arbitration priority; ties to the lowest vCPU.
                let chosen = targets
                    .into_iter()
                    .min_by_key(|v| (self.lapics[*v].arbitration_priority(), *v));
                if let Some(v) = chosen {
                    self.lapics[v].accept(message.vector, message.trigger);
                }
            }
            DeliveryMode::Nmi => {
                for v in targets {
                    if self.lapics[v].startup() == Startup::WaitingForSipi {
                        // Wait-for-SIPI blocks NMIs (Intel SDM vol. 3, 9.4.2).
                        self.stats.messages_ignored += 1;
                    } else {
                        self.act(PcAction::Nmi { vcpu: vcpu_id(v) });
                    }
                }
            }
            DeliveryMode::Init
                if message.level == Level::Deassert && message.trigger == TriggerMode::Level =>
            {
                // INIT level de-assert: nothing since the Pentium 4.
            }
            DeliveryMode::Init => {
                for v in targets {
                    self.lapics[v].init();
                    self.act(PcAction::Init { vcpu: vcpu_id(v) });
                }
            }
            DeliveryMode::Startup => {
                for v in targets {
                    if self.lapics[v].start() {
                        self.act(PcAction::Startup {
                            vcpu: vcpu_id(v),
                            vector: message.vector.0,
                        });
                    } else {
                        self.stats.messages_ignored += 1;
                    }
                }
            }
            DeliveryMode::Smi | DeliveryMode::ExtInt | DeliveryMode::Reserved => {
                self.stats.messages_ignored += 1;
            }
        }
    }

    fn act(&mut self, action: PcAction) {
        // A pending NMI is one latch: a second before the first is taken
        // is the same NMI.
        if matches!(action, PcAction::Nmi { .. }) && self.actions.contains(&action) {
            return;
        }
        if self.actions.len() >= ACTIONS_MAX {
            self.stats.actions_dropped += 1;
            return;
        }
        self.actions.push_back(action);
        assert!(self.actions.len() <= ACTIONS_MAX);
    }

    /// The next INIT, start-up or NMI for the engine to apply, in the
    /// order they were sent.
    pub fn poll_action(&mut self) -> Option<PcAction> {
        self.actions.pop_front()
    }

    /// Whether `vcpu` waits for a start-up IPI (after INIT, or from
    /// power-up on a machine whose application processors start so): the
    /// engine does not run it.
    pub fn waits_for_startup(&self, vcpu: VcpuId) -> bool {
        self.lapic(vcpu).startup() == Startup::WaitingForSipi
    }

    /// A RDMSR: the value, or none if the MSR is not the platform's.
    pub fn msr_read(&mut self, ctx: IoContext, msr: u32) -> Option<u64> {
        let v = self.index(ctx.vcpu);
        let lapic = &mut self.lapics[v];
        lapic.advance(ctx.now);
        match msr {
            lapic::MSR_APIC_BASE => Some(lapic.apic_base()),
            lapic::MSR_TSC_DEADLINE => Some(lapic.tsc_deadline()),
            _ => None,
        }
    }

    /// A WRMSR.
    pub fn msr_write(&mut self, ctx: IoContext, msr: u32, value: u64) -> MsrWrite {
        let v = self.index(ctx.vcpu);
        let lapic = &mut self.lapics[v];
        match msr {
            lapic::MSR_APIC_BASE => match lapic.write_apic_base(value) {
                Ok(()) => MsrWrite::Done,
                Err(_) => MsrWrite::GeneralProtection,
            },
            lapic::MSR_TSC_DEADLINE => {
                lapic.write_tsc_deadline(ctx.now, value);
                MsrWrite::Done
            }
            _ => MsrWrite::NotMine,
        }
    }

    /// CPUID as the platform shows it: leaf 1 names the vCPU's initial
    /// APIC ID and offers the APIC and the TSC-deadline timer (and not
    /// x2APIC); other leaves pass unchanged.
    pub fn cpuid(&self, vcpu: VcpuId, leaf: u32, regs: CpuidRegs) -> CpuidRegs {
        if leaf != 1 {
            return regs;
        }
        let id = u32::from(self.lapic(vcpu).id());
        CpuidRegs {
            ebx: (regs.ebx & 0x00ff_ffff) | (id << 24),
            ecx: (regs.ecx | CPUID_1_ECX_TSC_DEADLINE) & !CPUID_1_ECX_X2APIC,
            edx: regs.edx | CPUID_1_EDX_APIC,
            ..regs
        }
    }

    /// Fires every timer due at `now`.
    pub fn advance(&mut self, now: GuestNs) {
        for lapic in &mut self.lapics {
            lapic.advance(now);
        }
    }

    /// When the next timer fires: the engine ends its run slice there and
    /// calls [`Pc::advance`].
    pub fn next_deadline(&self) -> Option<GuestNs> {
        self.lapics
            .iter()
            .filter_map(LocalApic::next_deadline)
            .min()
    }

    /// The vector `vcpu` would take at an instruction boundary with
    /// interrupts enabled.
    pub fn pending(&self, vcpu: VcpuId) -> Option<Vector> {
        self.lapic(vcpu).pending()
    }

    /// `vcpu` takes its pending vector: IRR to ISR. The vector taken.
    pub fn acknowledge(&mut self, vcpu: VcpuId) -> Option<Vector> {
        let v = self.index(vcpu);
        self.lapics[v].acknowledge()
    }

    /// `vcpu` took `vector`, offered at a slice boundary when it was
    /// [`Pc::pending`]: IRR to ISR. False if it was not requested.
    pub fn taken(&mut self, vcpu: VcpuId, vector: Vector) -> bool {
        let v = self.index(vcpu);
        self.lapics[v].taken(vector)
    }

    /// A device drives I/O APIC pin `pin` to `line`.
    pub fn set_irq(&mut self, pin: usize, line: Line) {
        let mut out = Vec::new();
        self.ioapic.set_irq(pin, line, &mut out);
        self.deliver_all(out);
    }

    /// The UART's interrupt is an edge on its ISA pin.
    fn uart_effect(&mut self, effect: UartEffect) -> Vec<u8> {
        if effect.interrupt {
            self.set_irq(COM1_IRQ, Line::High);
            self.set_irq(COM1_IRQ, Line::Low);
        }
        effect.sent
    }

    /// A guest `in` of `size` bytes from `port` at `ctx.now`, if it is
    /// COM1's or the RTC's. Both are 8 bits wide: the bytes above the
    /// register float high.
    pub fn port_in(&mut self, ctx: IoContext, port: u16, size: u8) -> Option<u32> {
        let value = match port {
            RTC_INDEX_PORT => 0xff, // write-only
            RTC_DATA_PORT => self.rtc.read_data(ctx.now),
            _ => {
                let (value, effect) = self.uart.read(com1_offset(port)?);
                let sent = self.uart_effect(effect);
                assert!(sent.is_empty(), "a read sends nothing");
                value
            }
        };
        let float = match size {
            1 => 0,
            2 => 0xff00,
            _ => 0xffff_ff00,
        };
        Some(u32::from(value) | float)
    }

    /// A guest `out` to `port` at `ctx.now`, if it is COM1's or the
    /// RTC's: the bytes the UART sent.
    pub fn port_out(&mut self, ctx: IoContext, port: u16, value: u32) -> Option<Vec<u8>> {
        match port {
            RTC_INDEX_PORT => self.rtc.write_index(value as u8),
            RTC_DATA_PORT => self.rtc.write_data(ctx.now, value as u8),
            _ => {
                let effect = self.uart.write(com1_offset(port)?, value as u8);
                return Some(self.uart_effect(effect));
            }
        }
        Some(Vec::new())
    }

    /// The host types `bytes` on COM1: how many its FIFO took.
    pub fn uart_receive(&mut self, bytes: &[u8]) -> usize {
        let (taken, effect) = self.uart.receive(bytes);
        let sent = self.uart_effect(effect);
        assert!(sent.is_empty(), "receiving sends nothing");
        taken
    }

    /// Appends the platform's state.
    pub fn save(&self, w: &mut Writer) {
        w.u16(u16::try_from(self.lapics.len()).expect("at most 255 vCPUs"));
        for lapic in &self.lapics {
            lapic.save(w);
        }
        self.ioapic.save(w);
        self.uart.save(w);
        w.u32(u32::try_from(self.actions.len()).expect("bounded"));
        for action in &self.actions {
            let (kind, vcpu, vector) = match *action {
                PcAction::Init { vcpu } => (0, vcpu, 0),
                PcAction::Startup { vcpu, vector } => (1, vcpu, vector),
                PcAction::Nmi { vcpu } => (2, vcpu, 0),
            };
            w.u8(kind);
            w.u16(vcpu.0);
            w.u8(vector);
        }
        w.u64(self.stats.messages_ignored);
        w.u64(self.stats.actions_dropped);
        w.u64(self.stats.writes_ignored);
        // The parts added since: each tagged and length-delimited.
        let mut rtc = Writer::new();
        self.rtc.save(&mut rtc);
        w.u8(PART_RTC);
        w.blob(&rtc.into_bytes());
    }

    /// Decodes a saved platform for `vcpus` vCPUs whose RTC reads
    /// `rtc_epoch` at guest time 0: the whole of `r`, the PC's state and
    /// its own parts. A state saved before the platform had an RTC gets
    /// one as at power-up.
    pub fn restore(
        r: &mut Reader<'_>,
        vcpus: u16,
        rtc_epoch: UnixSeconds,
    ) -> Result<Pc, DecodeError> {
        let mut pc = Pc::restore_part(r, vcpus, rtc_epoch)?;
        r.parts(|tag, blob| pc.restore_own_part(tag, blob))?;
        Ok(pc)
    }

    /// Restores the part tagged `tag` if it is one of the PC's (the
    /// RTC's): whether it was.
    pub fn restore_own_part(&mut self, tag: u8, blob: &[u8]) -> Result<bool, DecodeError> {
        match tag {
            PART_RTC => {
                let mut part = Reader::new(blob);
                self.rtc = Rtc::restore(&mut part, self.rtc.epoch())?;
                part.finish()?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Decodes the PC's saved state for `vcpus` vCPUs from the start of
    /// `r`, with an RTC as at power-up, leaving what follows it (the
    /// platform section's tagged parts, the PC's and its devices').
    pub fn restore_part(
        r: &mut Reader<'_>,
        vcpus: u16,
        rtc_epoch: UnixSeconds,
    ) -> Result<Pc, DecodeError> {
        let count = r.u16()?;
        if count != vcpus {
            return Err(DecodeError::Invalid(format!(
                "platform state for {count} vCPUs, machine has {vcpus}"
            )));
        }
        let mut lapics = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            lapics.push(LocalApic::restore(r)?);
        }
        let ioapic = IoApic::restore(r)?;
        let uart = Uart::restore(r)?;
        let mut actions = VecDeque::new();
        for _ in 0..r.count(ACTIONS_MAX)? {
            let (kind, vcpu, vector) = (r.u8()?, VcpuId(r.u16()?), r.u8()?);
            if vcpu.0 >= vcpus || (kind != 1 && vector != 0) {
                return Err(DecodeError::Invalid(format!(
                    "platform action {kind} for vCPU {} vector {vector}",
                    vcpu.0
                )));
            }
            actions.push_back(match kind {
                0 => PcAction::Init { vcpu },
                1 => PcAction::Startup { vcpu, vector },
                2 => PcAction::Nmi { vcpu },
                other => {
                    return Err(DecodeError::Invalid(format!(
                        "platform action kind {other}"
                    )))
                }
            });
        }
        let stats = PcStats {
            messages_ignored: r.u64()?,
            actions_dropped: r.u64()?,
            writes_ignored: r.u64()?,
        };
        Ok(Pc {
            lapics,
            ioapic,
            uart,
            rtc: Rtc::new(rtc_epoch),
            actions,
            stats,
        })
    }
}

fn vcpu_id(index: usize) -> VcpuId {
    VcpuId(u16::try_from(index).expect("at most 255 vCPUs"))
}

fn com1_offset(port: u16) -> Option<u8> {
    let offset = port.checked_sub(COM1_BASE)?;
    (offset < COM1_PORTS).then_some(offset as u8)
}

/// Fills `data` from the 32-bit registers in the 16-byte slots it spans,
/// reading each slot once (a read may have effects: the timer, ESR).
fn read_slots(offset: u64, data: &mut [u8], mut read: impl FnMut(u32) -> u32) {
    let mut i = 0;
    while i < data.len() {
        let slot = (offset + i as u64) & !0xf;
        let bytes = read(slot as u32).to_le_bytes();
        while i < data.len() && (offset + i as u64) & !0xf == slot {
            let at = ((offset + i as u64) & 0xf) as usize;
            data[i] = bytes.get(at).copied().unwrap_or(0);
            i += 1;
        }
    }
}
