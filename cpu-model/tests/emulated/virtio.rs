// The virtio-mmio block device on the emulated engine: a guest of the
// machine's layout drives it as a driver does (status, VERSION_1,
// FEATURES_OK, one queue, DRIVER_OK), reads a sector by one request and
// polls the used ring. The host checks what reached guest memory, that
// the page the device wrote is reported dirty, and that code the guest
// had already run from that page is translated anew (the sector holds
// new code, as a kernel module read from disk does).

use cpu_model::{EmuConfig, EmuEngine, Quantum};
use iced_x86::code_asm::*;
use machine::devices::{BlockStore, DeviceBus, MemStore, BLOCK_BYTES};
use machine::guests::GuestImage;
use machine::layout::{GUEST_CODE, GUEST_DATA, MEMORY_BYTES_MIN, PDPT};
use machine::pc::lapic::Startup;
use machine::pc::Pc;
use machine::virtio::{VirtioSlot, VIRTIO_MMIO_BASE};
use machine::{Engine, Gpa, Instructions, Machine, Shape, VcpuId};

use crate::read_u64 as q;

const RINGS: u64 = GUEST_DATA.0 + 0x1_0000;
const AVAIL: u64 = RINGS + 0x100;
const USED: u64 = RINGS + 0x200;
const HEADER: u64 = GUEST_DATA.0 + 0x2_0000;
const STATUS: u64 = HEADER + 0x100;
/// The data buffer, a page of its own, which also holds code.
const BUFFER: u64 = GUEST_DATA.0 + 0x2_1000;
/// What the code in the buffer returned before and after the read.
const BEFORE: u64 = GUEST_DATA.0 + 0x3_0000;
const AFTER: u64 = BEFORE + 8;
/// A page directory for the fourth GiB, where the virtio windows are.
const HIGH_PD: u64 = GUEST_DATA.0 + 0x5000;
const SECTOR: u64 = 3;
/// `mov eax, imm32; ret`.
fn returns(value: u32) -> Vec<u8> {
    let mut code = vec![0xb8];
    code.extend_from_slice(&value.to_le_bytes());
    code.push(0xc3);
    code
}

fn image() -> GuestImage {
    let mut a = CodeAssembler::new(64).expect("64-bit");
    let (mut poll, mut done) = (a.create_label(), a.create_label());
    a.mov(r13, VirtioSlot::Block.base()).expect("asm");
    for (offset, value) in [
        (0x70, 1u32), // ACKNOWLEDGE
        (0x70, 3),    // DRIVER
        (0x24, 1),    // DriverFeaturesSel: the high word
        (0x20, 1),    // VIRTIO_F_VERSION_1
        (0x70, 0xb),  // FEATURES_OK
        (0x30, 0),    // QueueSel
        (0x38, 16),   // QueueNum
        (0x80, RINGS as u32),
        (0x90, AVAIL as u32),
        (0xa0, USED as u32),
        (0x44, 1),   // QueueReady
        (0x70, 0xf), // DRIVER_OK
    ] {
        a.mov(dword_ptr(r13 + offset), value).expect("asm");
    }
    a.mov(rax, BUFFER).expect("asm");
    a.call(rax).expect("asm");
    a.mov(qword_ptr(BEFORE), rax).expect("asm");
    a.mov(word_ptr(AVAIL + 2), 1).expect("asm"); // avail idx
    a.mov(dword_ptr(r13 + 0x50), 0).expect("asm"); // QueueNotify
    a.set_label(&mut poll).expect("asm");
    a.cmp(word_ptr(USED + 2), 1).expect("asm");
    a.jne(poll).expect("asm");
    a.mov(rax, BUFFER).expect("asm");
    a.call(rax).expect("asm");
    a.mov(qword_ptr(AFTER), rax).expect("asm");
    a.set_label(&mut done).expect("asm");
    a.hlt().expect("asm");
    a.jmp(done).expect("asm");
    GuestImage {
        code: a.assemble(GUEST_CODE.0).expect("assembles"),
        params: [0; 8],
    }
}

fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

/// A machine with virtio-blk on a store whose sector 3 holds new code,
/// the request laid out by the host.
fn machine(seed: u64) -> Machine<EmuEngine> {
    let shape = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
    let config = EmuConfig {
        seed,
        quantum: Quantum::default(),
    };
    let engine = EmuEngine::new(shape, &image(), config).expect("boots");
    let mut store = MemStore::new(8);
    let mut sector = [0u8; BLOCK_BYTES];
    sector[..6].copy_from_slice(&returns(2));
    store.write_block(SECTOR, &sector).expect("in range");
    let bus = DeviceBus::new(1, Box::new(store))
        .with_pc(Pc::new(1, Startup::Running))
        .with_virtio([2, 0, 0, 0, 0, 1]);
    let mut machine = Machine::new(shape, engine, bus);
    let mut header = [0u8; 16];
    header[8..].copy_from_slice(&SECTOR.to_le_bytes());
    let writes: Vec<(u64, Vec<u8>)> = vec![
        (PDPT.0 + 8 * 3, (HIGH_PD | 0x3).to_le_bytes().to_vec()),
        (
            HIGH_PD + 8 * ((VIRTIO_MMIO_BASE >> 21) & 0x1ff),
            ((VIRTIO_MMIO_BASE & !0x1f_ffff) | 0x93)
                .to_le_bytes()
                .to_vec(),
        ),
        (RINGS, descriptor(HEADER, 16, 1, 1).to_vec()),
        (RINGS + 16, descriptor(BUFFER, 512, 1 | 2, 2).to_vec()),
        (RINGS + 32, descriptor(STATUS, 1, 2, 0).to_vec()),
        (HEADER, header.to_vec()),
        (STATUS, vec![0xff]),
        (BUFFER, returns(1)),
    ];
    let engine = machine.engine_mut();
    for (gpa, bytes) in writes {
        engine.write_memory(Gpa(gpa), &bytes).expect("in memory");
    }
    engine.take_dirty_pages().expect("takes");
    machine
}

#[test]
fn a_guest_reads_a_sector_through_virtio_blk_and_runs_the_new_code() {
    let mut machine = machine(3);
    machine.run(Instructions(200_000)).expect("runs");
    assert_eq!(q(&machine, BEFORE) as u32, 1, "the buffer's first code ran");
    assert_eq!(q(&machine, USED + 2) & 0xffff, 1, "one request used");
    assert_eq!(q(&machine, USED + 4) as u32, 0, "its head");
    assert_eq!(
        (q(&machine, USED + 8) & 0xffff_ffff) as u32,
        513,
        "data and status"
    );
    assert_eq!(q(&machine, STATUS) & 0xff, 0, "VIRTIO_BLK_S_OK");
    assert_eq!(
        q(&machine, AFTER) as u32,
        2,
        "the sector's code, translated anew"
    );
    let dirty = machine.engine_mut().take_dirty_pages().expect("takes");
    for page in [BUFFER, STATUS, USED] {
        assert!(
            dirty.iter().any(|p| u64::from(p.0) == page / 4096),
            "page {page:#x} the device wrote is dirty: {dirty:?}"
        );
    }
    let counts = machine.bus().virtio().expect("virtio").counts();
    let one_read = machine::virtio::DeviceCounts {
        disk_reads: 1,
        ..Default::default()
    };
    assert_eq!(counts, one_read, "one read, nothing refused");
    let mut interrupt = [0u8; 4];
    let ctx = machine::devices::IoContext {
        vcpu: VcpuId(0),
        now: machine.engine().now(),
    };
    let status = Gpa(VirtioSlot::Block.base() + 0x60);
    assert!(machine.bus().mmio_read(ctx, status, &mut interrupt));
    assert_eq!(u32::from_le_bytes(interrupt), 1, "a used-buffer interrupt");
}

#[test]
fn the_same_seed_serves_the_request_at_the_same_instruction() {
    let hash = |seed| {
        let mut machine = machine(seed);
        machine.run(Instructions(200_000)).expect("runs");
        machine.state_hash().expect("hash")
    };
    assert_eq!(hash(5), hash(5));
}
