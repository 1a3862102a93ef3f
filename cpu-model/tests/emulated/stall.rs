// An injected vCPU stall: the stalled vCPU makes no progress for its
// duration of guest time, the others run on, and it resumes afterwards. A
// disk command that takes store time stalls the vCPU that issued it.

use cpu_model::{emulated_machine, EmuConfig, Quantum};
use machine::devices::{BlockStore, MemStore, StoreError, BLOCK_BYTES};
use machine::guests::ledger_load::{LedgerConfig, Request};
use machine::guests::{compute, Guest};
use machine::layout::MEMORY_BYTES_MIN;
use machine::{Instructions, Shape, VcpuId};

#[test]
fn a_stalled_vcpu_waits_out_its_stall_while_the_others_run() {
    let iterations = 20_000;
    let image = Guest::Compute
        .image([iterations, 0, 0, 0, 0, 0, 0, 0])
        .expect("assembles");
    let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
    let config = EmuConfig {
        seed: 3,
        quantum: Quantum::default(),
    };
    let mut machine =
        emulated_machine(shape, &image, config, Box::new(MemStore::new(1))).expect("boots");
    let work_ns = iterations * compute::INSTRUCTIONS_PER_ITERATION;
    let stall_ns = 20 * work_ns;
    machine
        .engine_mut()
        .stall_vcpu(VcpuId(1), stall_ns)
        .expect("vCPU 1 exists");
    machine.run(Instructions(4 * work_ns)).expect("runs");
    let done = machine.bus().done().to_vec();
    assert!(
        done[0].is_some(),
        "vCPU 0 finished while vCPU 1 was stalled: {done:?}"
    );
    assert!(
        done[1].is_none(),
        "vCPU 1 made progress while stalled: {done:?}"
    );
    machine
        .run(Instructions(stall_ns + 4 * work_ns))
        .expect("runs");
    let done = machine.bus().done().to_vec();
    assert!(
        done[1].is_some(),
        "vCPU 1 resumed after its stall: {done:?}"
    );
    assert!(
        machine.engine_mut().stall_vcpu(VcpuId(7), 1).is_err(),
        "no vCPU 7"
    );
}

/// A store whose every I/O takes `ns` of simulated time.
#[derive(Debug)]
struct Slow {
    inner: MemStore,
    ns: u64,
    owed: u64,
}

impl BlockStore for Slow {
    fn block_count(&self) -> u64 {
        self.inner.block_count()
    }
    fn read_block(&mut self, block: u64, buf: &mut [u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        self.owed += self.ns;
        self.inner.read_block(block, buf)
    }
    fn write_block(&mut self, block: u64, buf: &[u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        self.owed += self.ns;
        self.inner.write_block(block, buf)
    }
    fn take_busy_ns(&mut self) -> u64 {
        std::mem::take(&mut self.owed)
    }
}

/// Guest time until the ledger answers one transfer, on a store whose I/O
/// takes `io_ns`.
fn reply_after_ns(io_ns: u64) -> u64 {
    let image = Guest::Ledger
        .image(LedgerConfig::with_requests(1).params())
        .expect("assembles");
    let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
    let config = EmuConfig {
        seed: 5,
        quantum: Quantum::default(),
    };
    let store = Slow {
        inner: MemStore::new(16),
        ns: io_ns,
        owed: 0,
    };
    let mut machine = emulated_machine(shape, &image, config, Box::new(store)).expect("boots");
    machine
        .run(Instructions(200_000))
        .expect("boots the ledger");
    let request = Request {
        id: 1,
        from: 0,
        to: 1,
        amount: 5,
    };
    machine.bus().nic.deliver(request.encode()).expect("room");
    let step = 10_000;
    for k in 1..=10_000 {
        machine.run(Instructions(step)).expect("runs");
        if !machine.bus().nic.take_tx().is_empty() {
            return k * step;
        }
    }
    panic!("no reply with {io_ns} ns per disk I/O");
}

#[test]
fn a_slow_disk_holds_the_vcpu_that_waits_on_it() {
    let io_ns = 2_000_000;
    let fast = reply_after_ns(0);
    let slow = reply_after_ns(io_ns);
    // The journal write is a read and a write of its block, in order.
    assert!(
        slow >= fast + 2 * io_ns,
        "fast {fast} ns, slow {slow} ns, {io_ns} ns per I/O"
    );
    assert!(slow < fast + 3 * io_ns, "fast {fast} ns, slow {slow} ns");
}
