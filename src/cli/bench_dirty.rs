//! `lockstep bench dirty`: the emulated engine's dirty tracking modes side
//! by side in one process, on the same guests run in checkpoint epochs
//! (the dirty pages taken at every epoch's end, as the node driver does):
//! wall time, guest MIPS and pages per epoch, and each mode's wall time
//! against write-protection's. The guests: compute (endless, few stores)
//! and a dirtier busy all the time (by default it writes a page of its
//! region every few instructions, each page many times per epoch).

use std::process::ExitCode;
use std::time::Instant;

use cpu_model::{emulated_machine, DirtyTracking, EmuConfig, Quantum};
use machine::devices::MemStore;
use machine::guests::Guest;
use machine::{Engine, Instructions, Shape, PAGE_SIZE};

#[derive(Debug, clap::Args)]
pub struct DirtyBenchArgs {
    /// Guest time per measurement, ns.
    #[arg(long, default_value_t = 100_000_000)]
    guest_ns: u64,
    /// Checkpoint epoch, ns of guest time.
    #[arg(long, default_value_t = 5_000_000)]
    epoch_ns: u64,
    /// vCPU counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    vcpus: Vec<u16>,
    /// The dirtier's pages written per millisecond, per vCPU.
    #[arg(long, default_value_t = 25_000)]
    pages_per_ms: u64,
    /// The dirtier's region per vCPU, pages (it cycles through them).
    #[arg(long, default_value_t = 1024)]
    region_pages: u64,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 64)]
    memory_mib: u64,
    /// Scheduler seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const MODES: [DirtyTracking; 3] = [
    DirtyTracking::WriteProtect,
    DirtyTracking::EveryPage,
    DirtyTracking::Log,
];

/// What one mode's run measured.
struct Figures {
    wall_s: f64,
    instructions: u64,
    pages: u64,
    epochs: u64,
}

pub fn run(args: DirtyBenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.epoch_ns > 0, "need --epoch-ns > 0");
    anyhow::ensure!(
        args.guest_ns >= args.epoch_ns,
        "need --guest-ns >= --epoch-ns"
    );
    println!(
        "{} ms of guest time in {} ms epochs; dirtier: {} pages/ms over {} pages per vCPU",
        args.guest_ns / 1_000_000,
        args.epoch_ns / 1_000_000,
        args.pages_per_ms,
        args.region_pages
    );
    println!(
        "{:>8}  {:>5}  {:>13}  {:>8}  {:>8}  {:>12}  {:>10}",
        "guest", "vCPUs", "tracking", "wall s", "MIPS", "pages/epoch", "wall ratio"
    );
    for guest in [Guest::Compute, Guest::Dirtier] {
        for &vcpus in &args.vcpus {
            let mut baseline = None;
            for mode in MODES {
                let figures = measure(&args, guest, vcpus, mode)?;
                let base = *baseline.get_or_insert(figures.wall_s);
                println!(
                    "{:>8}  {vcpus:>5}  {:>13}  {:>8.3}  {:>8.1}  {:>12.1}  {:>10.2}",
                    format!("{guest:?}").to_lowercase(),
                    format!("{mode:?}"),
                    figures.wall_s,
                    figures.instructions as f64 / figures.wall_s / 1e6,
                    figures.pages as f64 / figures.epochs as f64,
                    figures.wall_s / base
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `guest` on `vcpus` vCPUs with `mode` for the measurement's guest
/// time, taking the dirty pages at each epoch's end.
fn measure(
    args: &DirtyBenchArgs,
    guest: Guest,
    vcpus: u16,
    mode: DirtyTracking,
) -> anyhow::Result<Figures> {
    let shape = Shape::new(vcpus, args.memory_mib << 20)?;
    let region_bytes = args.region_pages * PAGE_SIZE * u64::from(vcpus);
    anyhow::ensure!(
        machine::layout::GUEST_DATA.0 + region_bytes <= shape.memory_bytes(),
        "the dirtier's regions do not fit in {} MiB",
        args.memory_mib
    );
    let params = match guest {
        Guest::Dirtier => [args.pages_per_ms, args.region_pages, 0, 0, 0, 0, 0, 0],
        _ => [0; 8], // compute: endless
    };
    let image = guest.image(params)?;
    let config = EmuConfig {
        seed: args.seed,
        quantum: Quantum::default(),
    };
    let mut machine = emulated_machine(shape, &image, config, Box::new(MemStore::new(1)))?;
    machine.engine_mut().set_dirty_tracking(mode)?;
    machine.engine_mut().take_dirty_pages()?;
    let started = Instant::now();
    let (mut pages, mut epochs) = (0, 0);
    while machine.engine().now().0 < args.guest_ns {
        machine.run(Instructions(args.epoch_ns))?;
        pages += machine.engine_mut().take_dirty_pages()?.len() as u64;
        epochs += 1;
    }
    Ok(Figures {
        wall_s: started.elapsed().as_secs_f64(),
        instructions: machine.engine().stats().instructions.0,
        pages,
        epochs,
    })
}
