//! The device bus: routes port I/O to the devices and holds the per-vCPU
//! wake state (clock deadlines, doorbells) that ends a `hlt`.

use super::console::Console;
use super::disk::{BlockStore, Disk};
use super::nic::{Nic, NicError, Packet, FRAME_BYTES_MAX};
use super::*;
use crate::codec::{DecodeError, Reader, Writer};
use crate::linux::net::{ClientLink, LinkCounts, UdpLink};
use crate::pc::ioapic::Line;
use crate::pc::Pc;
use crate::units::{Gpa, GuestNs, VcpuId};
use crate::virtio::{GuestMemory, Virtio, PLATFORM_PART_VIRTIO};

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
    /// virtio-mmio devices on the disk's store and the NIC, for a machine
    /// with the PC platform (their interrupts are I/O APIC pins).
    virtio: Option<Virtio>,
    /// How clients' payloads reach the guest through the NIC: as they
    /// are, or framed for a kernel's stack behind virtio-net.
    /// Configuration, not saved state.
    link: ClientLink,
    link_counts: LinkCounts,
}

/// A checkpoint's platform section, decoded for a bus and not yet put in.
#[derive(Debug)]
pub struct DecodedPlatform {
    pc: Option<Pc>,
    virtio: Option<Virtio>,
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
            virtio: None,
            link: ClientLink::Payloads,
            link_counts: LinkCounts::default(),
        }
    }

    /// These devices with the PC platform `pc` (for as many vCPUs).
    pub fn with_pc(mut self, pc: Pc) -> DeviceBus {
        assert_eq!(pc.vcpus(), self.vcpus, "a platform for the bus's vCPUs");
        self.pc = Some(pc);
        self
    }

    /// These devices with virtio-blk on the disk's store and virtio-net on
    /// the NIC at `mac`, in the platform's virtio-mmio windows; the NIC
    /// then carries whole Ethernet frames, and clients reach the guest
    /// over UDP ([`UdpLink`]). Needs the PC platform.
    pub fn with_virtio(mut self, mac: [u8; 6]) -> DeviceBus {
        assert!(self.pc.is_some(), "virtio interrupts are I/O APIC pins");
        assert_eq!(
            self.nic,
            Nic::new(self.vcpus),
            "a NIC that carried nothing yet"
        );
        self.nic = Nic::new(self.vcpus).with_packet_bytes_max(FRAME_BYTES_MAX);
        self.virtio = Some(Virtio::new(self.store.block_count(), mac));
        self.link = ClientLink::Udp(UdpLink::new(mac));
        self
    }

    /// A client's request `payload` for the guest, through the machine's
    /// [`ClientLink`]: whatever delivers clients' packets calls this, not
    /// the NIC.
    pub fn deliver_client(&mut self, payload: Packet) -> Result<(), NicError> {
        self.link.deliver(&mut self.nic, payload)
    }

    /// The guest's replies for the clients since the last call, through
    /// the machine's [`ClientLink`] (which answers the guest's ARP for the
    /// host meanwhile): whatever collects the guest's output calls this,
    /// not the NIC.
    pub fn take_client_output(&mut self) -> Vec<Packet> {
        self.link.take_output(&mut self.nic, &mut self.link_counts)
    }

    /// The client link.
    pub fn client_link(&self) -> ClientLink {
        self.link
    }

    /// What the client link did with the guest's output so far.
    pub fn link_counts(&self) -> &LinkCounts {
        &self.link_counts
    }

    /// The virtio devices, if the machine has them.
    pub fn virtio(&self) -> Option<&Virtio> {
        self.virtio.as_ref()
    }

    /// Whether the virtio devices have work ([`DeviceBus::service_virtio`]):
    /// the engine then serves them before the vCPU's next instruction.
    pub fn virtio_wants_service(&self) -> bool {
        self.virtio
            .as_ref()
            .is_some_and(|virtio| virtio.wants_service(&self.nic))
    }

    /// Serves the virtio devices' notified queues and waiting packets for
    /// `vcpu`, writing guest memory only through `mem` (whose bitmap the
    /// engine then reads for dirty pages), and drives their interrupt pins.
    pub fn service_virtio(&mut self, mem: &GuestMemory, vcpu: VcpuId) {
        let v = self.index(vcpu);
        if let Some(virtio) = self.virtio.as_mut() {
            virtio.service(mem, self.store.as_mut(), &mut self.disk, &mut self.nic, v);
        }
        self.drive_virtio_lines();
    }

    /// Each virtio window's pin follows its InterruptStatus (a level).
    fn drive_virtio_lines(&mut self) {
        let (Some(virtio), Some(pc)) = (self.virtio.as_ref(), self.pc.as_mut()) else {
            return;
        };
        for (slot, asserted) in virtio.lines() {
            let line = if asserted { Line::High } else { Line::Low };
            pc.set_irq(slot.gsi() as usize, line);
        }
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
    /// PC platform's APIC pages, a virtio window) answered it into `data`.
    pub fn mmio_read(&mut self, ctx: IoContext, gpa: Gpa, data: &mut [u8]) -> bool {
        self.index(ctx.vcpu);
        if let (Some(virtio), Some((slot, offset))) = (self.virtio.as_mut(), Virtio::decode(gpa.0))
        {
            virtio.mmio_read(slot, offset, data);
            // Reads change nothing the pins follow.
            return true;
        }
        self.pc
            .as_mut()
            .is_some_and(|pc| pc.mmio_read(ctx, gpa, data))
    }

    /// A guest write of memory-mapped I/O at `gpa`: true if a device took
    /// it. The engine then applies what [`Pc::poll_action`] returns.
    pub fn mmio_write(&mut self, ctx: IoContext, gpa: Gpa, data: &[u8]) -> bool {
        self.index(ctx.vcpu);
        if let (Some(virtio), Some((slot, offset))) = (self.virtio.as_mut(), Virtio::decode(gpa.0))
        {
            virtio.mmio_write(slot, offset, data);
            self.drive_virtio_lines();
            return true;
        }
        self.pc
            .as_mut()
            .is_some_and(|pc| pc.mmio_write(ctx, gpa, data))
    }

    /// Whether a halted `vcpu` wakes at `now`: a packet waits, its doorbell
    /// rang, or its clock deadline passed. Level-triggered, so a packet that
    /// arrives between the guest's last poll and its `hlt` is not missed.
    /// With virtio-net a packet wakes no one by itself: it waits for a
    /// receive buffer, and its delivery interrupts.
    pub fn wake_pending(&self, vcpu: VcpuId, now: GuestNs) -> bool {
        let v = self.index(vcpu);
        let packet = self.virtio.is_none() && self.nic.rx_len() > 0;
        packet || self.doorbell[v] || self.wake_at[v].is_some_and(|at| now >= at)
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
    /// a machine without one. The PC platform's state, then each further
    /// device set as a part of its own: a tag and a length-prefixed blob
    /// (the virtio devices: [`PLATFORM_PART_VIRTIO`]).
    pub fn save_platform(&self) -> Vec<u8> {
        let mut w = Writer::new();
        if let Some(pc) = &self.pc {
            pc.save(&mut w);
        }
        if let Some(virtio) = &self.virtio {
            let mut part = Writer::new();
            virtio.save(&mut part);
            w.u8(PLATFORM_PART_VIRTIO);
            w.blob(&part.into_bytes());
        }
        w.into_bytes()
    }

    /// Decodes a platform section for this bus, changing nothing: a
    /// machine with a platform needs one (a checkpoint before version 4,
    /// or of a machine without one, has none), a machine without one
    /// takes none; the tagged parts after the PC's state are the PC's own
    /// (its RTC) and those of the machine's devices, each once.
    pub fn decode_platform(&self, bytes: &[u8]) -> Result<DecodedPlatform, DecodeError> {
        let epoch = match (&self.pc, bytes.is_empty()) {
            (None, true) => None,
            (None, false) => {
                return Err(DecodeError::Invalid(
                    "the checkpoint has PC platform state, the machine no platform".into(),
                ))
            }
            (Some(_), true) => {
                return Err(DecodeError::Invalid(
                    "the machine has a PC platform, the checkpoint no state for it".into(),
                ))
            }
            (Some(pc), false) => Some(pc.rtc().epoch()),
        };
        let mut r = Reader::new(bytes);
        let mut pc = epoch
            .map(|epoch| Pc::restore_part(&mut r, self.vcpus, epoch))
            .transpose()?;
        let mut virtio = None;
        r.parts(|tag, blob| match (tag, &self.virtio, &mut pc) {
            (PLATFORM_PART_VIRTIO, Some(ours), _) => {
                let mut decoded = Virtio::new(self.store_capacity(), ours.net.mac());
                decoded.restore(&mut Reader::new(blob))?;
                virtio = Some(decoded);
                Ok(true)
            }
            (_, _, Some(pc)) => pc.restore_own_part(tag, blob),
            _ => Ok(false),
        })?;
        if self.virtio.is_some() && virtio.is_none() {
            return Err(DecodeError::Invalid(
                "the machine has virtio devices, the checkpoint no state for them".into(),
            ));
        }
        Ok(DecodedPlatform { pc, virtio })
    }

    fn store_capacity(&self) -> u64 {
        self.store.block_count()
    }

    /// Puts in the platform [`DeviceBus::decode_platform`] returned.
    pub fn set_platform(&mut self, decoded: DecodedPlatform) {
        assert_eq!(
            decoded.pc.is_some(),
            self.pc.is_some(),
            "decoded for this bus"
        );
        assert_eq!(
            decoded.virtio.is_some(),
            self.virtio.is_some(),
            "decoded for this bus"
        );
        self.pc = decoded.pc;
        // The pins' levels are the I/O APIC's saved state already.
        self.virtio = decoded.virtio;
    }

    /// Replaces the devices' state with a saved one (the store is kept).
    pub fn restore(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let console = Console::restore(r)?;
        let nic = Nic::restore(r, self.vcpus, self.nic.packet_bytes_max())?;
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

    fn virtio_bus() -> DeviceBus {
        use crate::pc::lapic::Startup;
        DeviceBus::new(1, Box::new(MemStore::new(16)))
            .with_pc(crate::pc::Pc::new(1, Startup::Running))
            .with_virtio([2, 0, 0, 0, 0, 1])
    }

    fn mmio_u32(bus: &mut DeviceBus, gpa: u64) -> u32 {
        let mut data = [0u8; 4];
        assert!(bus.mmio_read(ctx(0, 0), Gpa(gpa), &mut data));
        u32::from_le_bytes(data)
    }

    #[test]
    fn the_virtio_windows_answer_with_their_devices_and_carry_frames() {
        use crate::virtio::{VirtioSlot, VIRTIO_MMIO_BASE, VIRTIO_MMIO_WINDOW_BYTES};
        let mut bus = virtio_bus();
        for (slot, id) in [(VirtioSlot::Block, 2), (VirtioSlot::Net, 1)] {
            assert_eq!(mmio_u32(&mut bus, slot.base()), 0x7472_6976, "magic");
            assert_eq!(mmio_u32(&mut bus, slot.base() + 8), id, "device id");
        }
        assert_eq!(
            mmio_u32(&mut bus, VirtioSlot::Block.base() + 0x100),
            16,
            "capacity"
        );
        assert_eq!(
            mmio_u32(&mut bus, VirtioSlot::Net.base() + 0x100),
            0x0000_0002,
            "mac"
        );
        let beyond = VIRTIO_MMIO_BASE + 2 * VIRTIO_MMIO_WINDOW_BYTES;
        assert!(
            !bus.mmio_read(ctx(0, 0), Gpa(beyond), &mut [0; 4]),
            "no third window"
        );
        bus.nic.deliver(vec![0; 1514]).expect("a whole frame");
        assert!(
            !bus.wake_pending(VcpuId(0), GuestNs(0)),
            "a packet waits for a buffer"
        );
        assert!(!bus.virtio_wants_service(), "no receive queue yet");
    }

    #[test]
    fn the_virtio_part_of_the_platform_section_round_trips_and_is_checked() {
        use crate::virtio::VirtioSlot;
        let mut bus = virtio_bus();
        let status = VirtioSlot::Net.base() + 0x70;
        assert!(bus.mmio_write(ctx(0, 0), Gpa(status), &3u32.to_le_bytes()));
        let bytes = bus.save_platform();
        let mut other = virtio_bus();
        let decoded = other.decode_platform(&bytes).expect("decodes");
        other.set_platform(decoded);
        assert_eq!(other.save_platform(), bytes);
        assert_eq!(mmio_u32(&mut other, status), 3);
        // The PC's state alone (a version 4 section) lacks the part.
        let pc_only = {
            let mut w = Writer::new();
            bus.pc().expect("a platform").save(&mut w);
            w.into_bytes()
        };
        let error = other.decode_platform(&pc_only).unwrap_err().to_string();
        assert!(error.contains("virtio"), "{error}");
        // A part twice, an unknown part, a truncated part.
        let mut twice = bytes.clone();
        twice.extend_from_slice(&bytes[pc_only.len()..]);
        assert!(other.decode_platform(&twice).is_err());
        let mut unknown = bytes.clone();
        unknown[pc_only.len()] = 9;
        assert!(other.decode_platform(&unknown).is_err());
        for len in pc_only.len() + 1..bytes.len() {
            assert!(
                other.decode_platform(&bytes[..len]).is_err(),
                "cut at {len}"
            );
        }
        // A machine without virtio takes no virtio part.
        let mut plain = DeviceBus::new(1, Box::new(MemStore::new(16)))
            .with_pc(crate::pc::Pc::new(1, crate::pc::lapic::Startup::Running));
        assert!(plain.decode_platform(&bytes).is_err());
        let decoded = plain.decode_platform(&pc_only).expect("the PC's state");
        plain.set_platform(decoded);
    }
}
