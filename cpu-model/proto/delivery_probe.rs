//! Checks the engine proposed in cpu-model/EXCEPTIONS.md: unicorn 2.1.5
//! with QEMU's own x86 delivery switched back on by
//! `unicorn-delivery.patch` (pseudo-registers 1000: deliver through the
//! IDT, 1001: raise an external interrupt). Built and run by
//! `run-delivery-probe.sh`, outside the workspace, on the same long-mode
//! ground as `tests/emulated/exceptions.rs`.

#[allow(dead_code)] // shared with the tests, which use all of it
mod longmode;

use iced_x86::code_asm::*;
use std::time::Instant;
use unicorn_engine::{RegisterX86, Unicorn};

use longmode::{enter_user, mmr, put, ABSENT, DATA, GDT, KERNEL_CODE, PT, USER_CODE};

const IDT: u64 = 0x7000;
const TSS: u64 = 0x8000;
const IST1_TOP: u64 = 0x8_8000;
const KERNEL_STACK_TOP: u64 = longmode::KERNEL_STACK_TOP;
/// Not present, beside ABSENT.
const ABSENT2: u64 = 0x30_4000;
/// A user page, not present.
const USER_ABSENT: u64 = 0x20_8000;
/// The 64-bit TSS descriptor (two GDT entries, selector 0x38).
const TSS_DESCRIPTOR: u64 =
    0x0000_8900_0000_0067 | ((TSS & 0xffff) << 16) | (((TSS >> 16) & 0xff) << 32);

const DELIVER: i32 = 1000;
const IRQ: i32 = 1001;

struct Labels {
    pf: CodeLabel,
    de: CodeLabel,
    gp: CodeLabel,
    irq: CodeLabel,
    mark: CodeLabel,
}

struct Guest {
    uc: Unicorn<'static, ()>,
    mark: u64,
    intr_hooks: std::rc::Rc<std::cell::Cell<u32>>,
}

impl Labels {
    fn new(a: &mut CodeAssembler) -> Labels {
        Labels {
            pf: a.create_label(),
            de: a.create_label(),
            gp: a.create_label(),
            irq: a.create_label(),
            mark: a.create_label(),
        }
    }
}

type Main = fn(&mut CodeAssembler, &mut Labels) -> Result<(), IcedError>;

/// Handlers: #PF maps the page at CR2 and records; #DE skips the 3-byte
/// div; #GP halts; irq counts. All record at DATA.
fn handlers(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    a.set_label(&mut l.pf)?;
    a.mov(qword_ptr(DATA + 0x50), rsp)?; // rsp at entry
    a.push(rax)?;
    a.push(rbx)?;
    a.mov(rax, cr2)?;
    a.mov(rbx, rax)?;
    a.shr(rbx, 12)?;
    a.shl(rbx, 3)?;
    a.add(rbx, PT as i32)?;
    a.and(rax, -4096)?;
    a.or(rax, 0x67)?;
    a.mov(qword_ptr(rbx), rax)?;
    a.mov(rax, cr2)?;
    a.invlpg(byte_ptr(rax))?;
    a.mov(rbx, qword_ptr(DATA))?; // count
    a.and(rbx, 7)?;
    a.mov(rax, qword_ptr(rsp + 16))?; // error code
    a.mov(qword_ptr(rbx * 8 + (DATA + 0x10) as i32), rax)?;
    a.mov(rax, qword_ptr(rsp + 24))?; // saved rip
    a.mov(qword_ptr(DATA + 0x58), rax)?;
    a.mov(rax, qword_ptr(rsp + 32))?; // saved cs
    a.mov(qword_ptr(DATA + 0x60), rax)?;
    a.mov(ax, cs)?;
    a.mov(word_ptr(DATA + 0x68), ax)?;
    a.inc(qword_ptr(DATA))?;
    a.pop(rbx)?;
    a.pop(rax)?;
    a.add(rsp, 8)?;
    a.iretq()?;

    a.set_label(&mut l.de)?;
    count_and_record_rip(a, DATA + 0x80)?;
    a.add(qword_ptr(rsp), 3)?;
    a.iretq()?;

    a.set_label(&mut l.gp)?;
    a.mov(rax, qword_ptr(rsp + 8))?;
    a.mov(qword_ptr(DATA + 0x90), rax)?; // saved rip
    a.hlt()?;

    a.set_label(&mut l.irq)?;
    count_and_record_rip(a, DATA + 0xa0)?;
    a.iretq()
}

/// In a handler entered without an error code: counts at `at` and keeps
/// the saved rip at `at + 8`.
fn count_and_record_rip(a: &mut CodeAssembler, at: u64) -> Result<(), IcedError> {
    a.inc(qword_ptr(at))?;
    a.push(rax)?;
    a.mov(rax, qword_ptr(rsp + 8))?;
    a.mov(qword_ptr(at + 8), rax)?;
    a.pop(rax)
}

fn gate(memory: &mut [u8], vector: u64, handler: u64, ist: u64, dpl: u64) {
    let low = (handler & 0xffff)
        | (0x08 << 16)
        | (ist << 32)
        | ((0x8e | (dpl << 5)) << 40)
        | (((handler >> 16) & 0xffff) << 48);
    put(memory, IDT + 16 * vector, low);
    put(memory, IDT + 16 * vector + 8, handler >> 32);
}

impl Guest {
    fn new(main: Main, user: Main) -> Guest {
        let mut memory = longmode::memory(&[ABSENT2, USER_ABSENT]);
        put(&mut memory, GDT + 56, TSS_DESCRIPTOR);
        put(&mut memory, TSS + 4, KERNEL_STACK_TOP);
        put(&mut memory, TSS + 0x24, IST1_TOP);
        put(&mut memory, ABSENT, 0x77);
        put(&mut memory, USER_ABSENT, 0x99);

        let mut a = CodeAssembler::new(64).expect("64");
        let mut l = Labels::new(&mut a);
        main(&mut a, &mut l).expect("asm");
        handlers(&mut a, &mut l).expect("asm");
        let r = longmode::assemble_into(&mut memory, KERNEL_CODE, a);
        let ip = |x: &CodeLabel| r.label_ip(x).expect("label");
        gate(&mut memory, 14, ip(&l.pf), 1, 0);
        gate(&mut memory, 0, ip(&l.de), 0, 0);
        gate(&mut memory, 13, ip(&l.gp), 0, 0);
        gate(&mut memory, 0x20, ip(&l.irq), 0, 0);
        let mark = r.label_ip(&l.mark).unwrap_or(0);

        let mut ua = CodeAssembler::new(64).expect("64");
        let mut ul = Labels::new(&mut ua);
        user(&mut ua, &mut ul).expect("asm");
        longmode::assemble_into(&mut memory, USER_CODE, ua);

        let mut uc = longmode::instance(&memory);
        uc.reg_write_long(RegisterX86::GDTR, &mmr(0, GDT, 8 * 9 - 1, 0))
            .expect("gdtr");
        uc.reg_write_long(RegisterX86::IDTR, &mmr(0, IDT, 16 * 256 - 1, 0))
            .expect("idtr");
        uc.reg_write_long(RegisterX86::TR, &mmr(0x38, TSS, 0x67, 0x8900))
            .expect("tr");
        uc.reg_write(DELIVER, 1).expect("deliver");
        let intr_hooks = std::rc::Rc::new(std::cell::Cell::new(0));
        let h = intr_hooks.clone();
        uc.add_intr_hook(move |uc, _| {
            h.set(h.get() + 1);
            let _ = uc.emu_stop();
        })
        .expect("hook");
        Guest {
            uc,
            mark,
            intr_hooks,
        }
    }

    fn run(&mut self) {
        let rip = self.uc.reg_read(RegisterX86::RIP).expect("rip");
        self.uc.emu_start(rip, 0, 0, 100_000).expect("runs");
    }

    fn q(&self, at: u64) -> u64 {
        let mut b = [0u8; 8];
        self.uc.mem_read(at, &mut b).expect("read");
        u64::from_le_bytes(b)
    }
}

fn none(a: &mut CodeAssembler, _: &mut Labels) -> Result<(), IcedError> {
    a.hlt()
}

fn main() {
    // A: two page faults, each handled (page mapped) and restarted.
    let mut g = Guest::new(
        |a, l| {
            a.mov(rax, ABSENT)?;
            a.mov(rcx, ABSENT2)?;
            a.set_label(&mut l.mark)?;
            a.mov(rbx, qword_ptr(rax))?;
            a.mov(qword_ptr(rcx + 8), rbx)?;
            a.hlt()
        },
        none,
    );
    g.run();
    assert_eq!(g.intr_hooks.get(), 0);
    assert_eq!(g.q(DATA), 2, "two #PF delivered");
    assert_eq!(
        g.uc.reg_read(RegisterX86::RBX).unwrap(),
        0x77,
        "the load restarted"
    );
    assert_eq!(g.q(ABSENT2 + 8), 0x77, "the store restarted");
    assert_eq!(
        (g.q(DATA + 0x10), g.q(DATA + 0x18)),
        (0, 2),
        "error codes: read, write; not present; supervisor"
    );
    assert_eq!(g.q(DATA + 0x50), IST1_TOP - 48, "IST1 stack, frame of 6");
    assert_eq!(
        g.q(DATA + 0x58),
        g.mark + 3,
        "saved rip = the faulting store"
    );
    assert_eq!(g.uc.reg_read(RegisterX86::CR2).unwrap(), ABSENT2 + 8);
    println!("A: two #PF handled and restarted, error codes 0 and 2, IST1: ok");

    // B: #DE handler skips the div.
    let mut g = Guest::new(
        |a, l| {
            a.mov(rax, 7u64)?;
            a.xor(ecx, ecx)?;
            a.set_label(&mut l.mark)?;
            a.div(rcx)?;
            a.mov(rdx, 0x55u64)?;
            a.hlt()
        },
        none,
    );
    g.run();
    assert_eq!(g.q(DATA + 0x80), 1);
    assert_eq!(g.q(DATA + 0x88), g.mark, "saved rip = the div");
    assert_eq!(g.uc.reg_read(RegisterX86::RDX).unwrap(), 0x55);
    println!("B: #DE handler: ok");

    // C: ring 3 #PF to the ring-0 IST handler and back; then hlt in ring 3
    // is #GP in ring 0.
    let mut g = Guest::new(
        |a, _| enter_user(a),
        |a, _| {
            a.mov(rax, USER_ABSENT)?;
            a.mov(rbx, qword_ptr(rax))?;
            a.hlt()
        },
    );
    g.run();
    assert_eq!(g.q(DATA), 1);
    assert_eq!(g.q(DATA + 0x10), 4, "error code: user read, not present");
    assert_eq!(g.q(DATA + 0x60), 0x33, "saved cs");
    assert_eq!(g.q(DATA + 0x68) & 0xffff, 0x08, "handler in ring 0");
    assert_eq!(g.q(DATA + 0x50), IST1_TOP - 48);
    assert_eq!(
        g.uc.reg_read(RegisterX86::RBX).unwrap(),
        0x99,
        "user load restarted"
    );
    assert_eq!(g.q(DATA + 0x90), USER_CODE + 10 + 3, "#GP at the user hlt");
    assert_eq!(g.uc.reg_read(RegisterX86::CS).unwrap(), 0x08);
    println!("C: ring 3 -> ring 0 via IST and back, #GP from ring 3: ok");

    // D: an external interrupt waits for IF=1 and the sti shadow.
    let mut g = Guest::new(
        |a, l| {
            a.nop()?;
            a.hlt()?;
            a.sti()?;
            a.set_label(&mut l.mark)?;
            a.nop()?;
            a.hlt()
        },
        none,
    );
    g.uc.reg_write(IRQ, 0x20).expect("irq");
    g.run();
    assert_eq!(g.q(DATA + 0xa0), 0, "masked while IF=0");
    g.run();
    assert_eq!(g.q(DATA + 0xa0), 1, "taken once IF=1");
    assert_eq!(
        g.q(DATA + 0xa8),
        g.mark + 1,
        "after the instruction in the sti shadow"
    );
    println!("D: external interrupt with IF and the sti shadow: ok");

    // E: cost of a #PF delivery round trip (fault, handler, iretq, restart).
    let mut g = Guest::new(
        |a, l| {
            // One page, unmapped again by the loop after each fault.
            a.mov(r8, 10_000u64)?;
            a.set_label(&mut l.mark)?;
            a.mov(rax, ABSENT)?;
            a.mov(rbx, qword_ptr(rax))?;
            a.mov(qword_ptr((PT + 8 * (ABSENT >> 12)) as i32), 0)?;
            a.invlpg(byte_ptr(rax))?;
            a.dec(r8)?;
            a.jnz(l.mark)?;
            a.hlt()
        },
        none,
    );
    let start = Instant::now();
    let rip = g.uc.reg_read(RegisterX86::RIP).unwrap();
    g.uc.emu_start(rip, 0, 0, 10_000_000).expect("runs");
    let elapsed = start.elapsed();
    assert_eq!(g.q(DATA), 10_000);
    println!(
        "E: 10000 #PF round trips in {:?} ({:?} each)",
        elapsed,
        elapsed / 10_000
    );
}
