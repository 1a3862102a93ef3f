//! The device bus: routes port I/O to the devices and holds the per-vCPU
//! wake state (clock deadlines, doorbells) that ends a `hlt`.

use super::console::Console;
use super::disk::{BlockStore, Disk};
use super::nic::Nic;
use super::*;
use crate::codec::{DecodeError, Reader, Writer};
use crate::pc::Pc;
use crate::units::{Gpa, GuestNs, VcpuId};

/// Who is doing port I/O, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoContext {
    /// The vCPU executing the `in`/`out`.
    pub vcpu: VcpuId,
    /// Guest time of the access.
    pub now: GuestNs,
}

/// Every device of a machine, reached by port number.
#[derive(Debug)]
pub struct DeviceBus {
    vcpus: u16,
    /// The console.
    pub console: Console,
    /// The NIC.
    pub nic: Nic,
    /// The disk's registers.
    pub disk: Disk,
    store: Box<dyn BlockStore>,
    clock_latch: Vec<u64>,
    wake_at: Vec<Option<GuestNs>>,
    doorbell: Vec<bool>,
    done: Vec<Option<u32>>,
    unknown_port_accesses: u64,
    /// The PC platform, for guests that run their own kernel: its COM1
    /// takes the console's port, its output goes to the console.
    pc: Option<Pc>,
}

impl DeviceBus {
    /// Devices for `vcpus` vCPUs, the disk backed by `store`.
    pub fn new(vcpus: u16, store: Box<dyn BlockStore>) -> DeviceBus {
        let n = usize::from(vcpus);
        DeviceBus {
            vcpus,
            console: Console::default(),
            nic: Nic::new(vcpus),
            disk: Disk::new(vcpus),
            store,
            clock_latch: vec![0; n],
            wake_at: vec![None; n],
            doorbell: vec![false; n],
            done: vec![None; n],
            unknown_port_accesses: 0,
            pc: None,
        }
    }

    /// These devices with the PC platform `pc` (for as many vCPUs).
    pub fn with_pc(mut self, pc: Pc) -> DeviceBus {
        assert_eq!(pc.vcpus(), self.vcpus, "a platform for the bus's vCPUs");
        self.pc = Some(pc);
        self
    }

    /// The PC platform, if the machine has one.
    pub fn pc(&self) -> Option<&Pc> {
        self.pc.as_ref()
    }

    /// The PC platform, mutably.
    pub fn pc_mut(&mut self) -> Option<&mut Pc> {
        self.pc.as_mut()
    }

    /// The disk's backing store.
    pub fn store(&mut self) -> &mut dyn BlockStore {
        self.store.as_mut()
    }

    /// The value each vCPU reported on the done port, if any.
    pub fn done(&self) -> &[Option<u32>] {
        &self.done
    }

    /// Accesses to ports no device answers (reads return all ones).
    pub fn unknown_port_accesses(&self) -> u64 {
        self.unknown_port_accesses
    }

    /// A guest `in` of `size` bytes (1, 2 or 4) from `port`.
    pub fn port_in(&mut self, ctx: IoContext, port: u16, size: u8) -> u32 {
        let v = self.index(ctx.vcpu);
        if let Some(value) = self.pc.as_mut().and_then(|pc| pc.port_in(ctx, port, size)) {
            return value;
        }
        let value = match port {
            PORT_NIC_RX_POP => self.nic.rx_pop(v),
            PORT_NIC_RX_DATA => self.nic.rx_data(v),
            PORT_DISK_DATA => self.disk.data_in(v),
            PORT_DISK_STATUS => self.disk.status(v),
            PORT_CLOCK_LO => {
                self.clock_latch[v] = ctx.now.0;
                ctx.now.0 as u32
            }
            PORT_CLOCK_HI => (self.clock_latch[v] >> 32) as u32,
            _ => {
                self.unknown_port_accesses += 1;
                u32::MAX
            }
        };
        match size {
            1 => value & 0xff,
            2 => value & 0xffff,
            _ => value,
        }
    }

    /// A guest `out` of `size` bytes of `value` to `port`.
    pub fn port_out(&mut self, ctx: IoContext, port: u16, _size: u8, value: u32) {
        let v = self.index(ctx.vcpu);
        if let Some(sent) = self
            .pc
            .as_mut()
            .and_then(|pc| pc.port_out(ctx, port, value))
        {
            for byte in sent {
                self.console.write(byte);
            }
            return;
        }
        match port {
            PORT_CONSOLE => self.console.write(value as u8),
            PORT_NIC_TX_DATA => self.nic.tx_data(v, value),
            PORT_NIC_TX_SEND => self.nic.tx_send(v, value),
            PORT_DISK_BLOCK => self.disk.select(v, value),
            PORT_DISK_OFFSET => self.disk.set_offset(v, value),
            PORT_DISK_DATA => self.disk.data_out(v, value),
            PORT_DISK_CMD => self.disk.command(v, value, self.store.as_mut()),
            PORT_CLOCK_WAKE => self.wake_at[v] = Some(GuestNs(ctx.now.0 + u64::from(value))),
            PORT_DOORBELL => {
                for (i, bell) in self.doorbell.iter_mut().enumerate() {
                    if value & (1 << i) != 0 {
                        *bell = true;
                    }
                }
            }
            PORT_DONE => self.done[v] = Some(value),
            _ => self.unknown_port_accesses += 1,
        }
    }

    /// A guest read of memory-mapped I/O at `gpa`: true if a device (the
    /// PC platform's APIC pages) answered it into `data`.
    pub fn mmio_read(&mut self, ctx: IoContext, gpa: Gpa, data: &mut [u8]) -> bool {
        self.index(ctx.vcpu);
        self.pc
            .as_mut()
            .is_some_and(|pc| pc.mmio_read(ctx, gpa, data))
    }

    /// A guest write of memory-mapped I/O at `gpa`: true if a device took
    /// it. The engine then applies what [`Pc::poll_action`] returns.
    pub fn mmio_write(&mut self, ctx: IoContext, gpa: Gpa, data: &[u8]) -> bool {
        self.index(ctx.vcpu);
        self.pc
            .as_mut()
            .is_some_and(|pc| pc.mmio_write(ctx, gpa, data))
    }

    /// Whether a halted `vcpu` wakes at `now`: a packet waits, its doorbell
    /// rang, or its clock deadline passed. Level-triggered, so a packet that
    /// arrives between the guest's last poll and its `hlt` is not missed.
    pub fn wake_pending(&self, vcpu: VcpuId, now: GuestNs) -> bool {
        let v = self.index(vcpu);
        self.nic.rx_len() > 0 || self.doorbell[v] || self.wake_at[v].is_some_and(|at| now >= at)
    }

    /// Clears the wake reasons of a vCPU that leaves `hlt`.
    pub fn woke(&mut self, vcpu: VcpuId, now: GuestNs) {
        let v = self.index(vcpu);
        self.doorbell[v] = false;
        if self.wake_at[v].is_some_and(|at| now >= at) {
            self.wake_at[v] = None;
        }
    }

    /// The earliest clock deadline of any vCPU, or of the platform's
    /// timers: when an idle machine next has something to do.
    pub fn next_deadline(&self) -> Option<GuestNs> {
        let clock = self.wake_at.iter().flatten().min().copied();
        let timers = self.pc.as_ref().and_then(Pc::next_deadline);
        clock.into_iter().chain(timers).min()
    }

    fn index(&self, vcpu: VcpuId) -> usize {
        assert!(vcpu.0 < self.vcpus, "vCPU {} of {}", vcpu.0, self.vcpus);
        usize::from(vcpu.0)
    }

    /// Appends the devices' state (not the store's blocks).
    pub fn save(&self, w: &mut Writer) {
        self.console.save(w);
        self.nic.save(w);
        self.disk.save(w);
        for v in 0..usize::from(self.vcpus) {
            w.u64(self.clock_latch[v]);
            w.u64(self.wake_at[v].map_or(u64::MAX, |at| at.0));
            w.u8(u8::from(self.doorbell[v]));
            w.u64(self.done[v].map_or(u64::MAX, u64::from));
        }
        w.u64(self.unknown_port_accesses);
    }

    /// The platform's state: the checkpoint's platform section, empty for
    /// a machine without one.
    pub fn save_platform(&self) -> Vec<u8> {
        let mut w = Writer::new();
        if let Some(pc) = &self.pc {
            pc.save(&mut w);
        }
        w.into_bytes()
    }

    /// Decodes a platform section for this bus, changing nothing: a
    /// machine with a platform needs one (a checkpoint before version 4,
    /// or of a machine without one, has none), a machine without one
    /// takes none.
    pub fn decode_platform(&self, bytes: &[u8]) -> Result<Option<Pc>, DecodeError> {
        match (&self.pc, bytes.is_empty()) {
            (None, true) => Ok(None),
            (None, false) => Err(DecodeError::Invalid(
                "the checkpoint has PC platform state, the machine no platform".into(),
            )),
            (Some(_), true) => Err(DecodeError::Invalid(
                "the machine has a PC platform, the checkpoint no state for it".into(),
            )),
            (Some(pc), false) => Ok(Some(Pc::restore(
                &mut Reader::new(bytes),
                self.vcpus,
                pc.rtc().epoch(),
            )?)),
        }
    }

    /// Puts in the platform [`DeviceBus::decode_platform`] returned.
    pub fn set_platform(&mut self, pc: Option<Pc>) {
        assert_eq!(pc.is_some(), self.pc.is_some(), "decoded for this bus");
        self.pc = pc;
    }

    /// Replaces the devices' state with a saved one (the store is kept).
    pub fn restore(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let console = Console::restore(r)?;
        let nic = Nic::restore(r, self.vcpus)?;
        let disk = Disk::restore(r, self.vcpus)?;
        let n = usize::from(self.vcpus);
        let (mut latch, mut wake_at, mut doorbell, mut done) = (vec![], vec![], vec![], vec![]);
        for v in 0..n {
            latch.push(r.u64()?);
            // u64::MAX is how `save` writes "none"; every other value is one.
            wake_at.push(Some(r.u64()?).filter(|at| *at != u64::MAX).map(GuestNs));
            doorbell.push(match r.u8()? {
                0 => false,
                1 => true,
                other => {
                    return Err(DecodeError::Invalid(format!(
                        "vCPU {v} doorbell is {other}, not 0 or 1"
                    )))
                }
            });
            done.push(match r.u64()? {
                u64::MAX => None,
                id => Some(u32::try_from(id).map_err(|_| {
                    DecodeError::Invalid(format!("vCPU {v} done id {id} is beyond u32"))
                })?),
            });
        }
        let unknown = r.u64()?;
        // The devices' state is the whole of its section.
        r.finish()?;
        self.console = console;
        self.nic = nic;
        self.disk = disk;
        self.clock_latch = latch;
        self.wake_at = wake_at;
        self.doorbell = doorbell;
        self.done = done;
        self.unknown_port_accesses = unknown;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::MemStore;

    fn ctx(vcpu: u16, now: u64) -> IoContext {
        IoContext {
            vcpu: VcpuId(vcpu),
            now: GuestNs(now),
        }
    }

    #[test]
    fn clock_deadline_and_doorbell_wake() {
        let mut bus = DeviceBus::new(2, Box::new(MemStore::new(1)));
        assert!(!bus.wake_pending(VcpuId(0), GuestNs(0)));
        bus.port_out(ctx(0, 100), PORT_CLOCK_WAKE, 4, 50);
        assert_eq!(bus.next_deadline(), Some(GuestNs(150)));
        assert!(!bus.wake_pending(VcpuId(0), GuestNs(149)));
        assert!(bus.wake_pending(VcpuId(0), GuestNs(150)));
        bus.woke(VcpuId(0), GuestNs(150));
        assert_eq!(bus.next_deadline(), None);
        bus.port_out(ctx(0, 0), PORT_DOORBELL, 4, 0b10);
        assert!(bus.wake_pending(VcpuId(1), GuestNs(0)));
        assert!(!bus.wake_pending(VcpuId(0), GuestNs(0)));
    }

    #[test]
    fn com1_takes_the_console_port_and_apic_timers_are_deadlines() {
        use crate::pc::lapic::{reg, Startup, APIC_BASE_DEFAULT};
        let pc = crate::pc::Pc::new(2, Startup::Running);
        let mut bus = DeviceBus::new(2, Box::new(MemStore::new(1))).with_pc(pc);
        bus.port_out(ctx(1, 0), PORT_CONSOLE, 1, u32::from(b'z'));
        assert_eq!(bus.console.take(), b"z");
        assert_eq!(
            bus.port_in(ctx(0, 0), 0x3fd, 1),
            0x60,
            "COM1's LSR, not all ones"
        );
        let apic = |offset: u32| Gpa(APIC_BASE_DEFAULT + u64::from(offset));
        assert!(bus.mmio_write(ctx(1, 0), apic(reg::SVR), &0x1ffu32.to_le_bytes()));
        assert!(bus.mmio_write(ctx(1, 0), apic(reg::LVT_TIMER), &0x40u32.to_le_bytes()));
        assert!(bus.mmio_write(ctx(1, 10), apic(reg::TIMER_INITIAL), &8u32.to_le_bytes()));
        assert_eq!(
            bus.next_deadline(),
            Some(GuestNs(26)),
            "8 ticks of 2 ns from 10"
        );
        bus.port_out(ctx(0, 0), PORT_CLOCK_WAKE, 4, 20);
        assert_eq!(
            bus.next_deadline(),
            Some(GuestNs(20)),
            "the earlier of the two"
        );
        let mut plain = DeviceBus::new(1, Box::new(MemStore::new(1)));
        assert!(
            !plain.mmio_read(ctx(0, 0), apic(reg::ID), &mut [0; 4]),
            "no platform"
        );
    }

    #[test]
    fn save_restore_round_trips() {
        let mut bus = DeviceBus::new(2, Box::new(MemStore::new(1)));
        bus.port_out(ctx(1, 7), PORT_CONSOLE, 1, u32::from(b'x'));
        bus.port_out(ctx(1, 7), PORT_DONE, 4, 42);
        bus.nic.deliver(vec![1, 2, 3]).expect("room");
        assert_eq!(bus.port_in(ctx(0, 1 << 33), PORT_CLOCK_LO, 4), 0);
        let mut w = Writer::new();
        bus.save(&mut w);
        let bytes = w.into_bytes();
        let mut other = DeviceBus::new(2, Box::new(MemStore::new(1)));
        other.restore(&mut Reader::new(&bytes)).expect("decodes");
        let mut again = Writer::new();
        other.save(&mut again);
        assert_eq!(again.into_bytes(), bytes);
        assert_eq!(other.port_in(ctx(0, 0), PORT_CLOCK_HI, 4), 2);
        assert_eq!(other.done()[1], Some(42));
    }

    #[test]
    fn restore_refuses_trailing_bytes_and_out_of_range_values() {
        let bus = DeviceBus::new(1, Box::new(MemStore::new(1)));
        let mut w = Writer::new();
        bus.save(&mut w);
        let bytes = w.into_bytes();
        let restore = |bytes: &[u8]| {
            let mut other = DeviceBus::new(1, Box::new(MemStore::new(1)));
            other
                .restore(&mut Reader::new(bytes))
                .map_err(|e| e.to_string())
        };
        assert_eq!(restore(&bytes), Ok(()));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(restore(&trailing).is_err(), "a byte after the state");
        // The one vCPU's record ends 8 bytes before the end: doorbell, then done.
        let done_at = bytes.len() - 8 - 8;
        let doorbell_at = done_at - 1;
        let mut doorbell = bytes.clone();
        doorbell[doorbell_at] = 2;
        let error = restore(&doorbell).unwrap_err();
        assert!(error.contains("doorbell"), "{error}");
        let mut done = bytes.clone();
        done[done_at..done_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let error = restore(&done).unwrap_err();
        assert!(error.contains("done id"), "{error}");
    }
}
