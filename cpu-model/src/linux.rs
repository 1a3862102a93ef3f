//! The Linux guest on the emulated engine: Debian's kernel and Lockstep's
//! initramfs (`guest-linux/`), on the PC platform with a virtio disk and
//! NIC. A boot to the ledger's service line costs about 5 G instructions
//! (a minute), so it happens once per (image, vCPUs): [`booted`] keeps the
//! booted machine's full checkpoint, in the process and in a file, and
//! every run starts from it ([`restored`]), drawing its interleaving from
//! its own seed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use machine::devices::{BlockStore, MemStore};
use machine::linux::{
    linux_bus, load, LinuxError, DEFAULT_CMDLINE, INITRAMFS_PATH, KERNEL_PATH, SERVING_LINE,
};
use machine::{
    Checkpoint, Engine, EngineError, Instructions, Kind, Machine, MachineError, Shape,
    CHECKPOINT_BYTES_MAX,
};
use sha2::{Digest, Sha256};

use crate::{DirtyTracking, EmuConfig, EmuEngine, Quantum};

/// The guest's memory: the kernel decompresses itself to 16 MiB and needs
/// 64 MiB there; the rest is the page cache and the ledger.
pub const LINUX_MEMORY_BYTES: u64 = 256 << 20;
/// A boot that has not served by then is stuck.
pub const BOOT_INSTRUCTIONS_MAX: u64 = 12_000_000_000;
/// The boot's seed: the booted checkpoint is one, whatever the runs'.
const BOOT_SEED: u64 = 0x004c_494e_5558;
/// Instructions per run between looks at the console.
const CHUNK: u64 = 20_000_000;
/// Console bytes an error shows of a boot that went wrong.
const CONSOLE_TAIL_BYTES: usize = 2000;
/// The engine patch: a cached boot made by another engine is not this one's.
const ENGINE_PATCH: &[u8] = include_bytes!("../unicorn/delivery.patch");
/// The repository, where the guest's files are unless the environment
/// says otherwise.
const REPOSITORY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// Where booted checkpoints are kept unless `LOCKSTEP_BOOT_CACHE` says.
const CACHE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/linux-boot");

/// Why the Linux guest could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LinuxGuestError {
    /// A file of the image is missing or unreadable.
    #[error("no {what} at {path}: {error}; make it with guest-linux/{script} (or set {variable})")]
    Missing {
        /// Kernel or initramfs.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The read's error.
        error: String,
        /// The script that makes it.
        script: &'static str,
        /// The environment variable that names another file.
        variable: &'static str,
    },
    /// The kernel does not load.
    #[error("the kernel does not load: {0}")]
    Load(#[from] LinuxError),
    /// The machine's shape is not one the engines run.
    #[error(transparent)]
    Shape(#[from] machine::layout::ShapeError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The machine failed.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The boot did not reach the ledger.
    #[error("the guest did not print `{SERVING_LINE}` within {instructions} instructions; its console ended:\n{tail}")]
    NotServing {
        /// How far it ran.
        instructions: u64,
        /// The end of its console.
        tail: String,
    },
    /// A boot of the same image failed earlier in this process.
    #[error("the boot failed earlier: {0}")]
    Earlier(String),
}

/// A file of the Linux guest's image: where it is looked for and what
/// makes it when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFile {
    /// The bzImage, from `guest-linux/fetch-kernel.sh`.
    Kernel,
    /// The cpio archive, from `guest-linux/build-initramfs.sh`.
    Initramfs,
}

impl ImageFile {
    fn what(self) -> &'static str {
        match self {
            ImageFile::Kernel => "Linux kernel",
            ImageFile::Initramfs => "initramfs",
        }
    }

    fn script(self) -> &'static str {
        match self {
            ImageFile::Kernel => "fetch-kernel.sh",
            ImageFile::Initramfs => "build-initramfs.sh",
        }
    }

    /// The environment variable that names another file.
    pub fn variable(self) -> &'static str {
        match self {
            ImageFile::Kernel => "LOCKSTEP_LINUX_KERNEL",
            ImageFile::Initramfs => "LOCKSTEP_LINUX_INITRAMFS",
        }
    }

    /// `given` (a command line's flag), else the file the environment
    /// variable names, else where `guest-linux/`'s script puts it.
    pub fn path(self, given: Option<&Path>) -> PathBuf {
        let default = match self {
            ImageFile::Kernel => KERNEL_PATH,
            ImageFile::Initramfs => INITRAMFS_PATH,
        };
        given
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(self.variable()).map(PathBuf::from))
            .unwrap_or_else(|| Path::new(REPOSITORY).join(default))
    }

    /// The bytes at `path`; missing, an error that names the script.
    pub fn read(self, path: &Path) -> Result<Vec<u8>, LinuxGuestError> {
        std::fs::read(path).map_err(|error| LinuxGuestError::Missing {
            what: self.what(),
            path: path.to_path_buf(),
            error: error.to_string(),
            script: self.script(),
            variable: self.variable(),
        })
    }
}

/// The image and the machine it runs in: kernel, initramfs, command line
/// and memory size.
#[derive(Clone, PartialEq, Eq)]
pub struct LinuxGuest {
    /// The bzImage.
    pub kernel: Vec<u8>,
    /// The cpio archive.
    pub initramfs: Vec<u8>,
    /// The kernel's command line.
    pub cmdline: String,
    /// Guest memory, bytes ([`LINUX_MEMORY_BYTES`] unless told).
    pub memory_bytes: u64,
}

impl std::fmt::Debug for LinuxGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxGuest")
            .field("kernel_bytes", &self.kernel.len())
            .field("initramfs_bytes", &self.initramfs.len())
            .field("cmdline", &self.cmdline)
            .field("memory_bytes", &self.memory_bytes)
            .finish()
    }
}

impl LinuxGuest {
    /// The image at [`ImageFile::path`] (`LOCKSTEP_LINUX_KERNEL`,
    /// `LOCKSTEP_LINUX_INITRAMFS`, else what `guest-linux/`'s scripts
    /// make), with `LOCKSTEP_LINUX_CMDLINE` or [`DEFAULT_CMDLINE`].
    pub fn from_env() -> Result<LinuxGuest, LinuxGuestError> {
        LinuxGuest::read(
            &ImageFile::Kernel.path(None),
            &ImageFile::Initramfs.path(None),
            &std::env::var("LOCKSTEP_LINUX_CMDLINE").unwrap_or_else(|_| DEFAULT_CMDLINE.into()),
        )
    }

    /// The image from these files, in [`LINUX_MEMORY_BYTES`].
    pub fn read(kernel: &Path, initramfs: &Path, cmdline: &str) -> Result<Self, LinuxGuestError> {
        Ok(LinuxGuest {
            kernel: ImageFile::Kernel.read(kernel)?,
            initramfs: ImageFile::Initramfs.read(initramfs)?,
            cmdline: cmdline.to_string(),
            memory_bytes: LINUX_MEMORY_BYTES,
        })
    }

    /// The same image in `bytes` of guest memory.
    pub fn with_memory(self, bytes: u64) -> LinuxGuest {
        LinuxGuest {
            memory_bytes: bytes,
            ..self
        }
    }

    /// What a booted checkpoint depends on: the image, the vCPUs, the
    /// disk's size, the memory, the engine's patch and the checkpoint
    /// format.
    fn boot_key(&self, vcpus: u16, disk_blocks: u64) -> String {
        let mut hash = Sha256::new();
        for part in [&self.kernel[..], &self.initramfs, self.cmdline.as_bytes()] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        hash.update(vcpus.to_le_bytes());
        hash.update(disk_blocks.to_le_bytes());
        hash.update(self.memory_bytes.to_le_bytes());
        hash.update(ENGINE_PATCH);
        hash.update(machine::checkpoint::VERSION.to_le_bytes());
        hash.update(env!("CARGO_PKG_VERSION").as_bytes());
        let digest = hash.finalize();
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        format!("linux-{vcpus}vcpu-{hex}")
    }

    /// A machine of `vcpus` at the kernel's first instruction, its disk on
    /// `store`, its dirty pages from the engine's dirty log.
    pub fn machine(
        &self,
        vcpus: u16,
        seed: u64,
        store: Box<dyn BlockStore>,
    ) -> Result<Machine<EmuEngine>, LinuxGuestError> {
        let shape = Shape::new(vcpus, self.memory_bytes)?;
        let image = load(&shape, &self.kernel, &self.cmdline, Some(&self.initramfs))?;
        let mut engine = EmuEngine::boot(shape, &image.memory, image.vcpu_states, config(seed))?;
        engine.set_dirty_tracking(DirtyTracking::Log)?;
        Ok(Machine::new(shape, engine, linux_bus(vcpus, store)))
    }

    /// Boots to the ledger's service line with its disk on `store` (blank:
    /// the ledger's journal) and takes the machine's full checkpoint there.
    pub fn boot(&self, vcpus: u16, store: Box<dyn BlockStore>) -> Result<Booted, LinuxGuestError> {
        let mut machine = self.machine(vcpus, BOOT_SEED, store)?;
        let mut console = Vec::new();
        run_to_serving(&mut machine, &mut console)?;
        let checkpoint = machine.checkpoint(Kind::Full)?;
        Ok(Booted {
            checkpoint,
            console,
        })
    }
}

/// Runs a booting Linux machine until the ledger's service line is whole
/// on its console (collected into `console`), or fails after
/// [`BOOT_INSTRUCTIONS_MAX`] with the console's end.
pub fn run_to_serving(
    machine: &mut Machine<EmuEngine>,
    console: &mut Vec<u8>,
) -> Result<(), LinuxGuestError> {
    loop {
        let now = machine.engine().now().0;
        if contains(console, SERVING_LINE.as_bytes()) && console.ends_with(b"\n") {
            return Ok(());
        }
        if now >= BOOT_INSTRUCTIONS_MAX {
            let tail = console.len().saturating_sub(CONSOLE_TAIL_BYTES);
            return Err(LinuxGuestError::NotServing {
                instructions: now,
                tail: String::from_utf8_lossy(&console[tail..]).into_owned(),
            });
        }
        machine.run(Instructions(CHUNK.min(BOOT_INSTRUCTIONS_MAX - now)))?;
        console.extend(machine.bus().console.take());
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn config(seed: u64) -> EmuConfig {
    EmuConfig {
        seed,
        quantum: Quantum::default(),
    }
}

/// A booted guest: its checkpoint and what its console said.
#[derive(Debug)]
pub struct Booted {
    /// The machine once the ledger serves.
    pub checkpoint: Checkpoint,
    /// Its console from the first line.
    pub console: Vec<u8>,
}

/// A machine restored from `checkpoint` (a booted Linux guest's, or any
/// full checkpoint of a Linux PC), its disk on `store`, interleaving by
/// `seed` from here on, its dirty pages from the engine's dirty log (so
/// deltas hold only the pages written).
pub fn restored(
    checkpoint: &Checkpoint,
    seed: u64,
    store: Box<dyn BlockStore>,
) -> Result<Machine<EmuEngine>, LinuxGuestError> {
    let shape = Shape::new(checkpoint.vcpus, checkpoint.memory_bytes)?;
    let mut engine = EmuEngine::blank(shape, checkpoint.vcpu_states.clone(), config(seed))?;
    // The dirty log, not write-protection: exact, and a store runs at
    // full speed once its page is logged; a kernel under write-protection
    // takes each first store to a page through a hook (and the boot
    // triple-faulted under it, cpu-model/EXCEPTIONS.md).
    engine.set_dirty_tracking(DirtyTracking::Log)?;
    let mut machine = Machine::new(shape, engine, linux_bus(shape.vcpus(), store));
    machine.restore(checkpoint)?;
    machine.engine_mut().reseed(seed);
    Ok(machine)
}

type Slot = Arc<OnceLock<Result<Arc<Checkpoint>, String>>>;

/// The booted checkpoints of this process, by boot key.
fn slots() -> &'static Mutex<BTreeMap<String, Slot>> {
    static SLOTS: OnceLock<Mutex<BTreeMap<String, Slot>>> = OnceLock::new();
    SLOTS.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// The booted checkpoint of `guest` on `vcpus` vCPUs and a blank disk of
/// `disk_blocks` (the capacity the kernel then knows): made once per process (concurrent callers wait for the one
/// boot), kept in `LOCKSTEP_BOOT_CACHE` (default `target/linux-boot/`;
/// `off` keeps none) under a name hashed from everything it depends on.
/// A cached file that does not decode is booted again and replaced.
pub fn booted(
    guest: &LinuxGuest,
    vcpus: u16,
    disk_blocks: u64,
) -> Result<Arc<Checkpoint>, LinuxGuestError> {
    let key = guest.boot_key(vcpus, disk_blocks);
    let slot = Arc::clone(
        slots()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(key.clone())
            .or_default(),
    );
    slot.get_or_init(|| {
        let file = cache_dir().map(|dir| dir.join(format!("{key}.ckpt")));
        if let Some(checkpoint) = file.as_deref().and_then(cached) {
            return Ok(Arc::new(checkpoint));
        }
        let booted = guest
            .boot(vcpus, Box::new(MemStore::new(disk_blocks)))
            .map_err(|e| e.to_string())?;
        if let Some(file) = &file {
            keep(file, &booted.checkpoint);
        }
        Ok(Arc::new(booted.checkpoint))
    })
    .clone()
    .map_err(LinuxGuestError::Earlier)
}

fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("LOCKSTEP_BOOT_CACHE") {
        Some(dir) if dir == "off" => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => Some(PathBuf::from(CACHE_DIR)),
    }
}

/// The checkpoint in `file`, if it is there and decodes.
fn cached(file: &Path) -> Option<Checkpoint> {
    let bytes = std::fs::read(file).ok()?;
    match Checkpoint::decode(&bytes, CHECKPOINT_BYTES_MAX) {
        Ok(checkpoint) => Some(checkpoint),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cached boot does not decode; booting again");
            None
        }
    }
}

/// Writes `checkpoint` to `file` whole or not at all (a temporary file
/// renamed into place); a cache that cannot be written is only slower.
fn keep(file: &Path, checkpoint: &Checkpoint) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&temporary, checkpoint.encode())?;
        std::fs::rename(&temporary, file)
    };
    if let Err(e) = write() {
        tracing::warn!(file = %file.display(), error = %e, "booted checkpoint not cached");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use machine::guests::Guest;

    fn compute(vcpus: u16) -> Machine<EmuEngine> {
        let shape = Shape::new(vcpus, machine::layout::MEMORY_BYTES_MIN).expect("valid");
        let image = Guest::Compute
            .image([1_000_000, 0, 0, 0, 0, 0, 0, 0])
            .expect("assembles");
        crate::emulated_machine(shape, &image, config(3), Box::new(MemStore::new(4)))
            .expect("boots")
    }

    fn small_checkpoint() -> Checkpoint {
        let mut machine = compute(1);
        machine.run(Instructions(10_000)).expect("runs");
        machine.checkpoint(Kind::Full).expect("checkpoint")
    }

    #[test]
    fn runs_restored_from_one_checkpoint_interleave_by_their_own_seeds() {
        let mut original = compute(2);
        original.run(Instructions(50_000)).expect("runs");
        let checkpoint = original.checkpoint(Kind::Full).expect("checkpoint");
        let run = |seed: Option<u64>| {
            let mut machine = compute(2);
            machine.restore(&checkpoint).expect("restores");
            if let Some(seed) = seed {
                machine.engine_mut().reseed(seed);
            }
            machine.run(Instructions(200_000)).expect("runs");
            machine.vcpu_states().expect("states")
        };
        assert_eq!(run(Some(11)), run(Some(11)), "one seed, one run");
        assert_ne!(
            run(Some(11)),
            run(Some(12)),
            "another seed, other quanta: the vCPUs stop at other points"
        );
        assert_eq!(run(None), run(None));
        assert_ne!(run(None), run(Some(11)), "a reseed changes what follows");
    }

    fn temporary_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lockstep-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_kept_checkpoint_reads_back_equal_and_a_damaged_one_not_at_all() {
        let dir = temporary_dir("boot-cache");
        let file = dir.join("one.ckpt");
        assert!(cached(&file).is_none(), "nothing kept yet");
        let checkpoint = small_checkpoint();
        keep(&file, &checkpoint);
        let back = cached(&file).expect("kept");
        assert_eq!(back.encode(), checkpoint.encode());
        let mut bytes = std::fs::read(&file).expect("reads");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&file, &bytes).expect("writes");
        assert!(cached(&file).is_none(), "a flipped bit is caught");
        std::fs::write(&file, &bytes[..middle]).expect("writes");
        assert!(cached(&file).is_none(), "a truncated file is caught");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("lists")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["one.ckpt"], "no temporary file left behind");
        std::fs::remove_dir_all(&dir).expect("cleans up");
    }

    #[test]
    fn the_boot_key_changes_with_everything_the_boot_depends_on() {
        let guest = LinuxGuest {
            kernel: vec![1; 100],
            initramfs: vec![2; 50],
            cmdline: "console=ttyS0".into(),
            memory_bytes: LINUX_MEMORY_BYTES,
        };
        let key = guest.boot_key(1, 1024);
        assert_eq!(key, guest.clone().boot_key(1, 1024));
        assert!(key.starts_with("linux-1vcpu-"));
        let mut kernel = guest.clone();
        kernel.kernel[99] = 0;
        let mut initramfs = guest.clone();
        initramfs.initramfs.push(0);
        let mut cmdline = guest.clone();
        cmdline.cmdline.push('x');
        // Bytes moved from one part to the next are another image.
        let mut moved = guest.clone();
        moved.kernel.pop();
        moved.initramfs.insert(0, 1);
        let others = [
            guest.boot_key(2, 1024),
            guest.boot_key(1, 2048),
            kernel.boot_key(1, 1024),
            initramfs.boot_key(1, 1024),
            cmdline.boot_key(1, 1024),
            moved.boot_key(1, 1024),
            guest.clone().with_memory(512 << 20).boot_key(1, 1024),
        ];
        for other in others {
            assert_ne!(other, key);
        }
    }

    #[test]
    fn a_missing_image_names_the_script_that_makes_it() {
        let dir = temporary_dir("no-image");
        let error = LinuxGuest::read(&dir.join("vmlinuz"), &dir.join("initramfs.cpio"), "")
            .expect_err("nothing there");
        let text = error.to_string();
        assert!(text.contains("fetch-kernel.sh"), "{text}");
        assert!(text.contains("LOCKSTEP_LINUX_KERNEL"), "{text}");
    }
}
