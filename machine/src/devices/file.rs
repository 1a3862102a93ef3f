//! A guest disk on a file, for real hosts: a [`BlockStore`] that survives
//! `kill -9` at any instant, keeps each block's checksum in the same record
//! as its data (so a restarted daemon can [`scrub`](FileStore::scrub) it and
//! knows which blocks are whole), and durably records the label of the
//! checkpoint the disk holds. The label is opaque bytes: the node driver
//! chooses what it means, and this crate does not know the protocol's types.
//!
//! # Layout
//!
//! The file is a sequence of [`PAGE_BYTES`] pages; integers are
//! little-endian; every crc is crc32c.
//!
//! | page | bytes  | contents |
//! |------|--------|----------|
//! | 0    | 0..24  | header: magic `LOCKDISK`, format version u32, block count u64, crc of bytes 0..20 |
//! | 1    | 0..45  | label slot A: sequence u64, present u8 (0 or 1), label `[u8; 32]` (zero if absent), crc of the slot's index byte and bytes 0..41 |
//! | 2    | 0..45  | label slot B, the same |
//! | 3..  | 7 × 516 | records: 512 data bytes, then the crc of the block number (u64) and the data |
//!
//! Block `b` is record `b % 7` of page `3 + b / 7`; the rest of every page
//! is zero. The valid slot with the higher sequence holds the label; a slot
//! that fails its crc (torn by power loss) is ignored.
//!
//! # Why it survives a crash
//!
//! - Every record, slot and header is written by one `write_all_at` that
//!   stays inside one page. Linux copies a write into the page cache a page
//!   at a time and gives up between pages when a fatal signal is pending, so
//!   only a write that crosses a page boundary can be cut short by SIGKILL:
//!   that is why a page holds 7 records and wastes 484 bytes.
//! - Power loss can tear a page, and with it the record being written and
//!   its neighbours in that page: their crcs fail and a scrub names them.
//!   The block number inside the crc also catches a record written to the
//!   wrong place. A write that the disk lost entirely, leaving an older
//!   whole record, no per-record field can catch; the label covers that.
//! - The header and each slot have a page of their own, so tearing one slot
//!   never touches the header or the other slot.
//! - [`FileStore::set_label`] makes the data durable before it writes the
//!   label, then writes the slot not holding the current label. So the
//!   label never claims a write that is not durable: every write before it
//!   is on the disk, and writes after it may or may not be.
//! - [`FileStore::create`] writes and syncs the whole disk under a staging
//!   name and then links it into place, so the path never names half a disk.
//! - A failed write or sync makes the store refuse everything after it:
//!   after a failed fsync Linux may drop the dirty pages and report the next
//!   fsync as clean, and a label set then would claim lost data.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::disk::{BlockStore, StoreError, BLOCK_BYTES};

/// Bytes in a disk's label: an opaque name for the checkpoint it holds.
pub const LABEL_BYTES: usize = 32;
/// Most blocks a disk may have: the disk device's block register is 32 bits.
pub const BLOCK_COUNT_MAX: u64 = 1 << 32;
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The unit of the layout: a write inside one page is never cut by SIGKILL.
pub const PAGE_BYTES: usize = 4096;

const MAGIC: [u8; 8] = *b"LOCKDISK";
const HEADER_BYTES: usize = 24;
const HEADER_CRC_AT: usize = 20;
const SLOT_BYTES: usize = 45;
const SLOT_CRC_AT: usize = 41;
const SLOTS: usize = 2;
const RECORD_BYTES: usize = BLOCK_BYTES + 4;
const RECORDS_PER_PAGE: usize = PAGE_BYTES / RECORD_BYTES;
/// Pages before the first record: the header and the two label slots.
const RECORDS_FIRST_PAGE: u64 = 3;
/// Pages one read of a scrub, or one write of a create, covers.
const CHUNK_PAGES_MAX: usize = 64;

const _: () = assert!(HEADER_BYTES <= PAGE_BYTES);
const _: () = assert!(SLOT_BYTES <= PAGE_BYTES);
const _: () = assert!(SLOT_CRC_AT == 9 + LABEL_BYTES);
const _: () = assert!(RECORDS_PER_PAGE == 7);
const _: () = assert!(RECORDS_PER_PAGE * RECORD_BYTES <= PAGE_BYTES);

/// Why a disk file could not be created or opened. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileStoreError {
    /// The operating system failed an operation on the file.
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        /// The file (or its staging name, or its directory).
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// [`FileStore::create`] found a file already there.
    #[error("{}: already exists; not making a disk over it", .path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file does not start with the disk magic.
    #[error("{}: not a Lockstep disk (it does not start with LOCKDISK)", .path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// A disk written by a newer build.
    #[error("{}: disk format version {found} is newer than this build, which reads version {supported}", .path.display(), supported = FORMAT_VERSION)]
    NewerVersion {
        /// The file.
        path: PathBuf,
        /// The version in the header.
        found: u32,
    },
    /// A version no build wrote.
    #[error("{}: unknown disk format version {found} (this build reads version {supported})", .path.display(), supported = FORMAT_VERSION)]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// The version in the header.
        found: u32,
    },
    /// The header fails its checksum.
    #[error("{}: the header fails its checksum: it is damaged", .path.display())]
    HeaderCorrupt {
        /// The file.
        path: PathBuf,
    },
    /// A block count of zero or above [`BLOCK_COUNT_MAX`], asked for or in a
    /// header.
    #[error("{}: {blocks} blocks; a disk has 1 to {max}", .path.display(), max = BLOCK_COUNT_MAX)]
    BlockCountInvalid {
        /// The file.
        path: PathBuf,
        /// The block count.
        blocks: u64,
    },
    /// The file is shorter than its header says (or than a header).
    #[error("{}: truncated: {actual_bytes} bytes, where the disk needs {expected_bytes}", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the disk needs.
        expected_bytes: u64,
        /// Bytes the file has.
        actual_bytes: u64,
    },
    /// The file is longer than its header says.
    #[error("{}: {actual_bytes} bytes, more than the {expected_bytes} of the disk its header describes", .path.display())]
    TooLong {
        /// The file.
        path: PathBuf,
        /// Bytes the disk needs.
        expected_bytes: u64,
        /// Bytes the file has.
        actual_bytes: u64,
    },
    /// Neither label slot is whole, or both claim the same sequence.
    #[error("{}: the label slots are damaged: which checkpoint the disk holds is unknown", .path.display())]
    LabelsCorrupt {
        /// The file.
        path: PathBuf,
    },
    /// [`FileStore::open_or_create`] found a disk of another size.
    #[error("{}: the disk has {found} blocks, not the {expected} asked for", .path.display())]
    BlockCountMismatch {
        /// The file.
        path: PathBuf,
        /// Blocks asked for.
        expected: u64,
        /// Blocks the disk has.
        found: u64,
    },
}

/// A guest disk in a file; see the [module docs](self) for the layout and
/// what survives a crash.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    file: File,
    blocks: u64,
    /// The label as the newest whole slot holds it.
    label: Option<[u8; LABEL_BYTES]>,
    label_sequence: u64,
    /// Which slot holds the label; the next label goes to the other one.
    label_slot: usize,
    /// The first write or sync that failed: the store refuses everything
    /// after it.
    failed: Option<String>,
}

impl FileStore {
    /// Makes a new zeroed disk of `blocks` blocks at `path`, with no label,
    /// durably (file and directory synced). Refuses if `path` exists.
    pub fn create(path: impl AsRef<Path>, blocks: u64) -> Result<FileStore, FileStoreError> {
        let path = path.as_ref();
        if blocks == 0 || blocks > BLOCK_COUNT_MAX {
            return Err(FileStoreError::BlockCountInvalid {
                path: path.to_owned(),
                blocks,
            });
        }
        let exists = path.try_exists();
        if exists.map_err(io_error(path, "checking whether it exists"))? {
            return Err(FileStoreError::Exists {
                path: path.to_owned(),
            });
        }
        let (directory, staging) = staging_path(path)?;
        let file = match write_new_disk(&staging, blocks) {
            Ok(file) => file,
            Err(e) => {
                // Best effort: a staging file left behind is harmless.
                let _ = std::fs::remove_file(&staging);
                return Err(e);
            }
        };
        // A hard link, unlike a rename, refuses to replace what is there.
        let linked = std::fs::hard_link(&staging, path);
        std::fs::remove_file(&staging).map_err(io_error(&staging, "removing the staging name"))?;
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(FileStoreError::Exists {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(io_error(path, "linking the new disk into place")(e)),
        }
        File::open(&directory)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(&directory, "syncing the directory"))?;
        Ok(FileStore {
            path: path.to_owned(),
            file,
            blocks,
            label: None,
            label_sequence: 1,
            label_slot: 0,
            failed: None,
        })
    }

    /// Opens the disk at `path`, checking its header, its length and its
    /// label slots. Any content gives an error or a disk, never a panic.
    pub fn open(path: impl AsRef<Path>) -> Result<FileStore, FileStoreError> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(path, "opening"))?;
        let metadata = file
            .metadata()
            .map_err(io_error(path, "reading its length"))?;
        let actual_bytes = metadata.len();
        let blocks = read_header(&file, path, actual_bytes)?;
        let expected_bytes = file_bytes(blocks);
        if actual_bytes < expected_bytes {
            return Err(FileStoreError::Truncated {
                path: path.to_owned(),
                expected_bytes,
                actual_bytes,
            });
        }
        if actual_bytes > expected_bytes {
            return Err(FileStoreError::TooLong {
                path: path.to_owned(),
                expected_bytes,
                actual_bytes,
            });
        }
        let (label_slot, slot) = read_label(&file, path)?;
        Ok(FileStore {
            path: path.to_owned(),
            file,
            blocks,
            label: slot.label,
            label_sequence: slot.sequence,
            label_slot,
            failed: None,
        })
    }

    /// Opens the disk at `path` if there is one, which must have `blocks`
    /// blocks; creates it otherwise.
    pub fn open_or_create(
        path: impl AsRef<Path>,
        blocks: u64,
    ) -> Result<FileStore, FileStoreError> {
        let path = path.as_ref();
        match FileStore::open(path) {
            Ok(store) if store.blocks == blocks => Ok(store),
            Ok(store) => Err(FileStoreError::BlockCountMismatch {
                path: path.to_owned(),
                expected: blocks,
                found: store.blocks,
            }),
            Err(FileStoreError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                FileStore::create(path, blocks)
            }
            Err(e) => Err(e),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The label of the checkpoint the disk holds, as last set (no I/O).
    pub fn label(&self) -> Option<[u8; LABEL_BYTES]> {
        self.label
    }

    /// How many times a label was recorded since the disk was made (plus
    /// one): tells a label that was set again from one left alone.
    pub fn label_sequence(&self) -> u64 {
        self.label_sequence
    }

    /// Durably records `label`: makes every write so far durable, then
    /// writes the label to the slot not holding the current one and syncs.
    /// Setting the label it already has does nothing.
    pub fn set_label(&mut self, label: Option<[u8; LABEL_BYTES]>) -> Result<(), StoreError> {
        self.check_healthy()?;
        if label == self.label {
            return Ok(());
        }
        // The label must never claim data that is not durable.
        self.flush()?;
        let sequence = self.label_sequence.checked_add(1).ok_or_else(|| {
            StoreError::Io(format!("{}: label sequence exhausted", self.path.display()))
        })?;
        assert!(self.label_slot < SLOTS);
        let slot = 1 - self.label_slot;
        let bytes = encode_slot(slot, &Slot { sequence, label });
        let written = self.file.write_all_at(&bytes, slot_offset(slot));
        written.map_err(|e| self.fail("writing a label slot", e))?;
        self.sync("syncing the label")?;
        self.label_slot = slot;
        self.label_sequence = sequence;
        self.label = label;
        Ok(())
    }

    /// Reads every block and returns, in order, those whose record fails
    /// its checksum; an I/O error stops the scrub.
    pub fn scrub(&mut self) -> Result<Vec<u64>, StoreError> {
        self.check_healthy()?;
        let pages = pages_for(self.blocks);
        let mut chunk = vec![0u8; CHUNK_PAGES_MAX * PAGE_BYTES];
        let mut data = [0u8; BLOCK_BYTES];
        let mut bad = Vec::new();
        let mut page = 0u64;
        while page < pages {
            let count = (pages - page).min(CHUNK_PAGES_MAX as u64);
            let bytes = &mut chunk[..count as usize * PAGE_BYTES];
            let offset = (RECORDS_FIRST_PAGE + page) * PAGE_BYTES as u64;
            let read = self.file.read_exact_at(bytes, offset);
            read.map_err(|e| self.io("scrubbing", e))?;
            for (block, record) in page_records(page, bytes) {
                if block < self.blocks && decode_record(block, record, &mut data).is_err() {
                    bad.push(block);
                }
            }
            page += count;
        }
        assert!(bad.len() as u64 <= self.blocks);
        assert!(bad.windows(2).all(|pair| pair[0] < pair[1]));
        Ok(bad)
    }

    fn record_offset(&self, block: u64) -> Result<u64, StoreError> {
        if block >= self.blocks {
            return Err(StoreError::OutOfRange(block));
        }
        let page = RECORDS_FIRST_PAGE + block / RECORDS_PER_PAGE as u64;
        let within = (block % RECORDS_PER_PAGE as u64) * RECORD_BYTES as u64;
        let offset = page * PAGE_BYTES as u64 + within;
        // The record's one write must stay inside one page (module docs).
        assert_eq!(
            offset / PAGE_BYTES as u64,
            (offset + RECORD_BYTES as u64 - 1) / PAGE_BYTES as u64
        );
        Ok(offset)
    }

    fn check_healthy(&self) -> Result<(), StoreError> {
        match &self.failed {
            None => Ok(()),
            Some(first) => Err(StoreError::Io(format!(
                "{first} (an earlier failure: the disk is no longer trusted)"
            ))),
        }
    }

    fn sync(&mut self, what: &'static str) -> Result<(), StoreError> {
        let synced = self.file.sync_data();
        synced.map_err(|e| self.fail(what, e))
    }

    /// An I/O error that leaves the store as it was (a failed read).
    fn io(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError::Io(format!("{}: {what}: {e}", self.path.display()))
    }

    /// An I/O error after which what is durable is unknown: refuses
    /// everything from now on.
    fn fail(&mut self, what: &str, e: std::io::Error) -> StoreError {
        let error = self.io(what, e);
        if self.failed.is_none() {
            self.failed = Some(error.to_string());
        }
        error
    }
}

impl BlockStore for FileStore {
    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn read_block(&mut self, block: u64, buf: &mut [u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        self.check_healthy()?;
        let offset = self.record_offset(block)?;
        let mut record = [0u8; RECORD_BYTES];
        let read = self.file.read_exact_at(&mut record, offset);
        read.map_err(|e| self.io(&format!("reading block {block}"), e))?;
        decode_record(block, &record, buf)
    }

    fn write_block(&mut self, block: u64, buf: &[u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        self.check_healthy()?;
        let offset = self.record_offset(block)?;
        // One write, inside one page: SIGKILL cannot leave half of it.
        let record = encode_record(block, buf);
        let written = self.file.write_all_at(&record, offset);
        written.map_err(|e| self.fail(&format!("writing block {block}"), e))
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.check_healthy()?;
        // The file's length never changes after create, so the data and
        // not the other metadata is what must reach the disk.
        self.sync("syncing the data")
    }
}

/// What one label slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    sequence: u64,
    label: Option<[u8; LABEL_BYTES]>,
}

fn io_error<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> FileStoreError + 'a {
    move |source| FileStoreError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("a 4-byte slice"))
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("an 8-byte slice"))
}

/// Record pages a disk of `blocks` blocks needs.
fn pages_for(blocks: u64) -> u64 {
    blocks.div_ceil(RECORDS_PER_PAGE as u64)
}

/// The length of a disk file of `blocks` blocks.
fn file_bytes(blocks: u64) -> u64 {
    (RECORDS_FIRST_PAGE + pages_for(blocks)) * PAGE_BYTES as u64
}

fn slot_offset(slot: usize) -> u64 {
    assert!(slot < SLOTS);
    (1 + slot as u64) * PAGE_BYTES as u64
}

/// The records of the record pages in `bytes`, the first being `page`,
/// with their block numbers (past the last block too).
fn page_records(page: u64, bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8; RECORD_BYTES])> + '_ {
    let first = page * RECORDS_PER_PAGE as u64;
    bytes
        .chunks_exact(PAGE_BYTES)
        .flat_map(|page| {
            page.chunks_exact(RECORD_BYTES)
                .take(RECORDS_PER_PAGE)
                .map(|record| record.try_into().expect("a record-sized chunk"))
        })
        .enumerate()
        .map(move |(i, record)| (first + i as u64, record))
}

fn encode_header(blocks: u64) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&blocks.to_le_bytes());
    let crc = crc32c::crc32c(&header[..HEADER_CRC_AT]);
    header[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks the header and returns the block count. The magic and version
/// come first: they are what every version of the format starts with, so a
/// newer disk is named as such even if its header is laid out differently.
fn read_header(file: &File, path: &Path, file_len: u64) -> Result<u64, FileStoreError> {
    let mut header = [0u8; HEADER_BYTES];
    let have = HEADER_BYTES.min(usize::try_from(file_len).unwrap_or(HEADER_BYTES));
    file.read_exact_at(&mut header[..have], 0)
        .map_err(io_error(path, "reading the header"))?;
    let magic = have.min(MAGIC.len());
    if header[..magic] != MAGIC[..magic] {
        return Err(FileStoreError::Foreign {
            path: path.to_owned(),
        });
    }
    if have < HEADER_BYTES {
        return Err(FileStoreError::Truncated {
            path: path.to_owned(),
            expected_bytes: HEADER_BYTES as u64,
            actual_bytes: file_len,
        });
    }
    let found = le_u32(&header, 8);
    if found > FORMAT_VERSION {
        return Err(FileStoreError::NewerVersion {
            path: path.to_owned(),
            found,
        });
    }
    if found != FORMAT_VERSION {
        return Err(FileStoreError::UnknownVersion {
            path: path.to_owned(),
            found,
        });
    }
    if crc32c::crc32c(&header[..HEADER_CRC_AT]) != le_u32(&header, HEADER_CRC_AT) {
        return Err(FileStoreError::HeaderCorrupt {
            path: path.to_owned(),
        });
    }
    let blocks = le_u64(&header, 12);
    if blocks == 0 || blocks > BLOCK_COUNT_MAX {
        return Err(FileStoreError::BlockCountInvalid {
            path: path.to_owned(),
            blocks,
        });
    }
    Ok(blocks)
}

fn slot_crc(slot: usize, bytes: &[u8]) -> u32 {
    let index = u8::try_from(slot).expect("two slots");
    crc32c::crc32c_append(crc32c::crc32c(&[index]), &bytes[..SLOT_CRC_AT])
}

fn encode_slot(slot: usize, contents: &Slot) -> [u8; SLOT_BYTES] {
    let mut bytes = [0u8; SLOT_BYTES];
    bytes[0..8].copy_from_slice(&contents.sequence.to_le_bytes());
    if let Some(label) = contents.label {
        bytes[8] = 1;
        bytes[9..SLOT_CRC_AT].copy_from_slice(&label);
    }
    let crc = slot_crc(slot, &bytes);
    bytes[SLOT_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// The slot's contents, if it is whole.
fn decode_slot(slot: usize, bytes: &[u8; SLOT_BYTES]) -> Option<Slot> {
    if slot_crc(slot, bytes) != le_u32(bytes, SLOT_CRC_AT) {
        return None;
    }
    let mut label = [0u8; LABEL_BYTES];
    label.copy_from_slice(&bytes[9..SLOT_CRC_AT]);
    let label = match bytes[8] {
        0 if label == [0; LABEL_BYTES] => None,
        1 => Some(label),
        _ => return None,
    };
    Some(Slot {
        sequence: le_u64(bytes, 0),
        label,
    })
}

/// The slot holding the label, and what it holds: the whole slot with the
/// higher sequence.
fn read_label(file: &File, path: &Path) -> Result<(usize, Slot), FileStoreError> {
    let mut slots = [None; SLOTS];
    for (index, slot) in slots.iter_mut().enumerate() {
        let mut bytes = [0u8; SLOT_BYTES];
        file.read_exact_at(&mut bytes, slot_offset(index))
            .map_err(io_error(path, "reading a label slot"))?;
        *slot = decode_slot(index, &bytes);
    }
    match slots {
        [Some(a), Some(b)] if a.sequence > b.sequence => Ok((0, a)),
        [Some(a), Some(b)] if b.sequence > a.sequence => Ok((1, b)),
        [Some(a), None] => Ok((0, a)),
        [None, Some(b)] => Ok((1, b)),
        _ => Err(FileStoreError::LabelsCorrupt {
            path: path.to_owned(),
        }),
    }
}

fn record_crc(block: u64, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&block.to_le_bytes()), data)
}

fn encode_record(block: u64, data: &[u8; BLOCK_BYTES]) -> [u8; RECORD_BYTES] {
    let mut record = [0u8; RECORD_BYTES];
    record[..BLOCK_BYTES].copy_from_slice(data);
    record[BLOCK_BYTES..].copy_from_slice(&record_crc(block, data).to_le_bytes());
    record
}

fn decode_record(
    block: u64,
    record: &[u8; RECORD_BYTES],
    data: &mut [u8; BLOCK_BYTES],
) -> Result<(), StoreError> {
    let (bytes, crc) = record.split_at(BLOCK_BYTES);
    if record_crc(block, bytes) != le_u32(crc, 0) {
        return Err(StoreError::Corrupt(block));
    }
    data.copy_from_slice(bytes);
    Ok(())
}

/// The directory of `path` and a staging name in it for `path`, unique to
/// this process.
fn staging_path(path: &Path) -> Result<(PathBuf, PathBuf), FileStoreError> {
    let Some(name) = path.file_name() else {
        let source = std::io::Error::new(ErrorKind::InvalidInput, "the path names no file");
        return Err(io_error(path, "choosing a staging name")(source));
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut staging = std::ffi::OsString::from(".");
    staging.push(name);
    staging.push(format!(".creating.{}", std::process::id()));
    let staging = directory.join(staging);
    Ok((directory, staging))
}

/// Writes a whole zeroed disk at `staging` and syncs it.
fn write_new_disk(staging: &Path, blocks: u64) -> Result<File, FileStoreError> {
    let io = |what| io_error(staging, what);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(staging)
        .map_err(io("making the staging file"))?;
    // Sized first, so every byte not written below (slack) reads as zero.
    file.set_len(file_bytes(blocks))
        .map_err(io("sizing the staging file"))?;
    file.write_all_at(&encode_header(blocks), 0)
        .map_err(io("writing the header"))?;
    let slots = [(0, 1), (1, 0)];
    for (slot, sequence) in slots {
        let bytes = encode_slot(
            slot,
            &Slot {
                sequence,
                label: None,
            },
        );
        file.write_all_at(&bytes, slot_offset(slot))
            .map_err(io("writing a label slot"))?;
    }
    write_zero_records(&file, blocks).map_err(io("writing the blocks"))?;
    file.sync_all().map_err(io("syncing the new disk"))?;
    Ok(file)
}

fn write_zero_records(file: &File, blocks: u64) -> std::io::Result<()> {
    let pages = pages_for(blocks);
    let zeros = [0u8; BLOCK_BYTES];
    let mut chunk = vec![0u8; CHUNK_PAGES_MAX * PAGE_BYTES];
    let mut page = 0u64;
    while page < pages {
        let count = (pages - page).min(CHUNK_PAGES_MAX as u64);
        let bytes = &mut chunk[..count as usize * PAGE_BYTES];
        let first = page * RECORDS_PER_PAGE as u64;
        for (i, record) in bytes
            .chunks_exact_mut(PAGE_BYTES)
            .flat_map(|page| page.chunks_exact_mut(RECORD_BYTES).take(RECORDS_PER_PAGE))
            .enumerate()
        {
            let block = first + i as u64;
            if block < blocks {
                record.copy_from_slice(&encode_record(block, &zeros));
            } else {
                record.fill(0);
            }
        }
        file.write_all_at(bytes, (RECORDS_FIRST_PAGE + page) * PAGE_BYTES as u64)?;
        page += count;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use quickcheck::QuickCheck;
    use std::io::{BufRead, BufReader, Lines};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{ChildStdout, Command, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    /// A file name in the temp directory, unique to this process and call;
    /// the file is removed when this is dropped.
    #[derive(Debug)]
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(tag: &str) -> TempPath {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("lockstep-filestore-{}-{n}-{tag}.disk", std::process::id());
            TempPath(std::env::temp_dir().join(name))
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// What the tests write to `block` in `round`: the block number, the
    /// round, and a fill of both. Round 0 is a new disk's zeroed block.
    fn pattern(block: u64, round: u64) -> [u8; BLOCK_BYTES] {
        let mut data = [0u8; BLOCK_BYTES];
        if round == 0 {
            return data;
        }
        data[0..8].copy_from_slice(&block.to_le_bytes());
        data[8..16].copy_from_slice(&round.to_le_bytes());
        data[16..].fill((block.wrapping_mul(31) ^ round.wrapping_mul(7)) as u8 | 1);
        data
    }

    /// The round whose pattern `data` is, if it is one for `block`.
    fn round_of(block: u64, data: &[u8; BLOCK_BYTES]) -> Option<u64> {
        let round = le_u64(data, 8);
        (pattern(block, round) == *data).then_some(round)
    }

    fn label(n: u64) -> [u8; LABEL_BYTES] {
        let mut label = [0xa5; LABEL_BYTES];
        label[..8].copy_from_slice(&n.to_le_bytes());
        label
    }

    fn read(store: &mut FileStore, block: u64) -> Result<[u8; BLOCK_BYTES], StoreError> {
        let mut buf = [0xee; BLOCK_BYTES];
        store.read_block(block, &mut buf).map(|()| buf)
    }

    /// XORs `mask` into the file's byte at `offset`.
    fn flip(path: &Path, offset: u64, mask: u8) {
        let mut bytes = std::fs::read(path).expect("read the disk file");
        bytes[usize::try_from(offset).expect("a small file")] ^= mask;
        std::fs::write(path, bytes).expect("write the disk file");
    }

    /// Recomputes the header's and the slots' checksums, so that what open
    /// checks behind them sees the bytes as they are.
    fn fix_checksums(bytes: &mut [u8]) {
        if bytes.len() >= HEADER_BYTES {
            let crc = crc32c::crc32c(&bytes[..HEADER_CRC_AT]);
            bytes[HEADER_CRC_AT..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        }
        for slot in 0..SLOTS {
            let at = slot_offset(slot) as usize;
            if bytes.len() >= at + SLOT_BYTES {
                let crc = slot_crc(slot, &bytes[at..]);
                bytes[at + SLOT_CRC_AT..at + SLOT_BYTES].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }

    /// Rewrites the header with `edit` applied and a valid checksum.
    fn edit_header(path: &Path, edit: impl FnOnce(&mut [u8])) {
        let mut bytes = std::fs::read(path).expect("read the disk file");
        edit(&mut bytes[..HEADER_BYTES]);
        fix_checksums(&mut bytes);
        std::fs::write(path, bytes).expect("write the disk file");
    }

    #[test]
    fn blocks_and_label_survive_close_and_reopen() {
        let path = TempPath::new("reopen");
        let mut store = FileStore::create(&path.0, 10).expect("create");
        assert_eq!(store.block_count(), 10);
        assert_eq!(store.label(), None);
        assert_eq!(read(&mut store, 9), Ok([0; BLOCK_BYTES]));
        for block in 0..10 {
            store.write_block(block, &pattern(block, 3)).expect("write");
        }
        store.flush().expect("flush");
        store.set_label(Some(label(3))).expect("set the label");
        assert_eq!(store.label(), Some(label(3)));
        drop(store);

        let mut store = FileStore::open(&path.0).expect("reopen");
        assert_eq!(store.block_count(), 10);
        assert_eq!(store.label(), Some(label(3)));
        for block in 0..10 {
            assert_eq!(
                read(&mut store, block),
                Ok(pattern(block, 3)),
                "block {block}"
            );
        }
        assert_eq!(store.scrub(), Ok(vec![]));
        assert_eq!(store.take_busy_ns(), 0);
        store.set_label(None).expect("clear the label");
        drop(store);

        let store = FileStore::open(&path.0).expect("reopen");
        assert_eq!(store.label(), None);
        assert_eq!(store.path(), path.0.as_path());
    }

    #[test]
    fn a_flipped_byte_is_corrupt_to_read_and_to_scrub() {
        let path = TempPath::new("flip");
        let mut store = FileStore::create(&path.0, 20).expect("create");
        for block in 0..20 {
            store.write_block(block, &pattern(block, 1)).expect("write");
        }
        let data_at = store.record_offset(8).expect("in range") + 100;
        let crc_at = store.record_offset(19).expect("in range") + BLOCK_BYTES as u64;
        drop(store);
        flip(&path.0, data_at, 0x04);
        flip(&path.0, crc_at, 0x80);

        let mut store = FileStore::open(&path.0).expect("reopen");
        assert_eq!(read(&mut store, 8), Err(StoreError::Corrupt(8)));
        assert_eq!(read(&mut store, 19), Err(StoreError::Corrupt(19)));
        for block in (0..20).filter(|b| ![8, 19].contains(b)) {
            assert_eq!(
                read(&mut store, block),
                Ok(pattern(block, 1)),
                "block {block}"
            );
        }
        assert_eq!(store.scrub(), Ok(vec![8, 19]));
        // Writing a block again mends it.
        store.write_block(8, &pattern(8, 2)).expect("write");
        assert_eq!(store.scrub(), Ok(vec![19]));
    }

    #[test]
    fn scrub_reads_past_its_first_chunk() {
        let blocks = (CHUNK_PAGES_MAX * RECORDS_PER_PAGE) as u64 + 10;
        let path = TempPath::new("chunks");
        let store = FileStore::create(&path.0, blocks).expect("create");
        let first = store.record_offset(0).expect("in range");
        let late = store.record_offset(blocks - 2).expect("in range");
        drop(store);
        flip(&path.0, first, 0x01);
        flip(&path.0, late + 7, 0x01);
        let mut store = FileStore::open(&path.0).expect("reopen");
        assert_eq!(store.scrub(), Ok(vec![0, blocks - 2]));
    }

    #[test]
    fn a_record_copied_to_another_block_is_corrupt() {
        let path = TempPath::new("misplaced");
        let mut store = FileStore::create(&path.0, 4).expect("create");
        store.write_block(1, &pattern(1, 1)).expect("write");
        let from = store.record_offset(1).expect("in range") as usize;
        let to = store.record_offset(2).expect("in range") as usize;
        drop(store);
        let mut bytes = std::fs::read(&path.0).expect("read");
        bytes.copy_within(from..from + RECORD_BYTES, to);
        std::fs::write(&path.0, bytes).expect("write");
        let mut store = FileStore::open(&path.0).expect("reopen");
        assert_eq!(read(&mut store, 1), Ok(pattern(1, 1)));
        assert_eq!(read(&mut store, 2), Err(StoreError::Corrupt(2)));
    }

    #[test]
    fn a_torn_newest_label_slot_falls_back_to_the_older_one() {
        let path = TempPath::new("torn-slot");
        let mut store = FileStore::create(&path.0, 2).expect("create");
        store.set_label(Some(label(1))).expect("label 1");
        store.set_label(Some(label(2))).expect("label 2");
        let newest = store.label_slot;
        assert_eq!(store.label_sequence(), 3);
        drop(store);
        flip(&path.0, slot_offset(newest) + 20, 0xff);

        let mut store = FileStore::open(&path.0).expect("reopen");
        assert_eq!(store.label(), Some(label(1)));
        assert_eq!(store.label_sequence(), 2);
        // The next label goes over the torn slot, and wins.
        store.set_label(Some(label(3))).expect("label 3");
        assert_eq!(store.label_slot, newest);
        drop(store);
        let store = FileStore::open(&path.0).expect("reopen");
        assert_eq!(store.label(), Some(label(3)));
        assert_eq!(store.label_sequence(), 3);
    }

    #[test]
    fn a_new_disk_survives_a_torn_first_slot() {
        let path = TempPath::new("torn-first");
        drop(FileStore::create(&path.0, 2).expect("create"));
        flip(&path.0, slot_offset(0), 0x01);
        let store = FileStore::open(&path.0).expect("reopen");
        assert_eq!(store.label(), None);
        assert_eq!(store.label_sequence(), 0);
    }

    #[test]
    fn both_label_slots_torn_is_an_error() {
        let path = TempPath::new("torn-both");
        drop(FileStore::create(&path.0, 2).expect("create"));
        flip(&path.0, slot_offset(0) + 3, 0x01);
        flip(&path.0, slot_offset(1) + 44, 0x01);
        let error = FileStore::open(&path.0).expect_err("no whole slot");
        assert!(
            matches!(error, FileStoreError::LabelsCorrupt { .. }),
            "{error}"
        );
    }

    #[test]
    fn setting_the_same_label_again_does_no_io() {
        let path = TempPath::new("same-label");
        let mut store = FileStore::create(&path.0, 2).expect("create");
        store.set_label(Some(label(5))).expect("label");
        let sequence = store.label_sequence();
        // Tear the slot behind the store's back: setting the label again
        // would write it whole again, and doing nothing leaves it torn.
        flip(&path.0, slot_offset(store.label_slot), 0x01);
        store.set_label(Some(label(5))).expect("the same label");
        assert_eq!(store.label_sequence(), sequence);
        drop(store);
        let store = FileStore::open(&path.0).expect("reopen");
        assert_eq!(store.label(), None);
        assert_eq!(store.label_sequence(), sequence - 1);
    }

    #[test]
    fn truncated_files_are_errors_naming_the_file() {
        let path = TempPath::new("truncated");
        drop(FileStore::create(&path.0, 10).expect("create"));
        let full = std::fs::read(&path.0).expect("read");
        let cuts = [
            0,
            5,
            8,
            HEADER_BYTES - 1,
            HEADER_BYTES,
            PAGE_BYTES,
            full.len() - 1,
        ];
        for len in cuts {
            std::fs::write(&path.0, &full[..len]).expect("write");
            let error = FileStore::open(&path.0).expect_err("truncated");
            match &error {
                FileStoreError::Truncated { actual_bytes, .. } => {
                    assert_eq!(*actual_bytes, len as u64)
                }
                other => panic!("cut to {len}: {other}"),
            }
            assert!(
                error.to_string().contains(&*path.0.to_string_lossy()),
                "{error}"
            );
        }
    }

    #[test]
    fn a_longer_file_is_an_error() {
        let path = TempPath::new("long");
        drop(FileStore::create(&path.0, 10).expect("create"));
        let mut bytes = std::fs::read(&path.0).expect("read");
        bytes.push(0);
        std::fs::write(&path.0, bytes).expect("write");
        let error = FileStore::open(&path.0).expect_err("too long");
        assert!(matches!(error, FileStoreError::TooLong { .. }), "{error}");
    }

    #[test]
    fn random_bytes_and_a_wrong_magic_are_foreign_files() {
        let path = TempPath::new("random");
        let mut rng = SplitMix64::new(0x5eed);
        let bytes: Vec<u8> = (0..50_000).map(|_| rng.next_u64() as u8).collect();
        std::fs::write(&path.0, bytes).expect("write");
        let error = FileStore::open(&path.0).expect_err("random bytes");
        assert!(matches!(error, FileStoreError::Foreign { .. }), "{error}");
        assert!(
            error.to_string().contains(&*path.0.to_string_lossy()),
            "{error}"
        );

        let path = TempPath::new("magic");
        drop(FileStore::create(&path.0, 3).expect("create"));
        flip(&path.0, 7, 0x20);
        let error = FileStore::open(&path.0).expect_err("wrong magic");
        assert!(matches!(error, FileStoreError::Foreign { .. }), "{error}");
    }

    #[test]
    fn newer_and_unknown_versions_are_errors() {
        let path = TempPath::new("version");
        drop(FileStore::create(&path.0, 3).expect("create"));
        edit_header(&path.0, |h| h[8..12].copy_from_slice(&2u32.to_le_bytes()));
        let error = FileStore::open(&path.0).expect_err("newer");
        assert!(
            matches!(error, FileStoreError::NewerVersion { found: 2, .. }),
            "{error}"
        );
        edit_header(&path.0, |h| h[8..12].copy_from_slice(&0u32.to_le_bytes()));
        let error = FileStore::open(&path.0).expect_err("unknown");
        assert!(
            matches!(error, FileStoreError::UnknownVersion { found: 0, .. }),
            "{error}"
        );
        edit_header(&path.0, |h| h[8..12].copy_from_slice(&1u32.to_le_bytes()));
        assert!(FileStore::open(&path.0).is_ok());
    }

    #[test]
    fn a_damaged_or_impossible_header_is_an_error() {
        let path = TempPath::new("header");
        drop(FileStore::create(&path.0, 3).expect("create"));
        flip(&path.0, 12, 0x02);
        let error = FileStore::open(&path.0).expect_err("damaged");
        assert!(
            matches!(error, FileStoreError::HeaderCorrupt { .. }),
            "{error}"
        );
        edit_header(&path.0, |h| h[12..20].copy_from_slice(&0u64.to_le_bytes()));
        let error = FileStore::open(&path.0).expect_err("no blocks");
        assert!(
            matches!(error, FileStoreError::BlockCountInvalid { blocks: 0, .. }),
            "{error}"
        );
        edit_header(&path.0, |h| {
            h[12..20].copy_from_slice(&u64::MAX.to_le_bytes())
        });
        let error = FileStore::open(&path.0).expect_err("too many blocks");
        assert!(
            matches!(error, FileStoreError::BlockCountInvalid { .. }),
            "{error}"
        );
        edit_header(&path.0, |h| {
            h[12..20].copy_from_slice(&BLOCK_COUNT_MAX.to_le_bytes())
        });
        let error = FileStore::open(&path.0).expect_err("more blocks than the file holds");
        assert!(matches!(error, FileStoreError::Truncated { .. }), "{error}");
    }

    #[test]
    fn open_or_create_makes_a_disk_then_opens_it_and_checks_its_size() {
        let path = TempPath::new("open-or-create");
        let mut store = FileStore::open_or_create(&path.0, 5).expect("create");
        store.write_block(4, &pattern(4, 9)).expect("write");
        store.set_label(Some(label(9))).expect("label");
        drop(store);
        let mut store = FileStore::open_or_create(&path.0, 5).expect("open");
        assert_eq!(store.label(), Some(label(9)));
        assert_eq!(read(&mut store, 4), Ok(pattern(4, 9)));
        drop(store);
        let error = FileStore::open_or_create(&path.0, 6).expect_err("another size");
        assert!(
            matches!(
                error,
                FileStoreError::BlockCountMismatch {
                    expected: 6,
                    found: 5,
                    ..
                }
            ),
            "{error}"
        );
        // A foreign file is reported, never replaced.
        std::fs::write(&path.0, b"precious").expect("write");
        let error = FileStore::open_or_create(&path.0, 5).expect_err("foreign");
        assert!(matches!(error, FileStoreError::Foreign { .. }), "{error}");
        assert_eq!(std::fs::read(&path.0).expect("read"), b"precious");
    }

    #[test]
    fn create_refuses_an_existing_file_and_leaves_no_staging_file() {
        let path = TempPath::new("exists");
        std::fs::write(&path.0, b"precious").expect("write");
        let error = FileStore::create(&path.0, 4).expect_err("exists");
        assert!(matches!(error, FileStoreError::Exists { .. }), "{error}");
        assert_eq!(std::fs::read(&path.0).expect("read"), b"precious");

        let path = TempPath::new("fresh");
        drop(FileStore::create(&path.0, 4).expect("create"));
        let name = path
            .0
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        let staging: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .expect("list the temp dir")
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|entry| entry.starts_with(&format!(".{name}.creating")))
            .collect();
        assert_eq!(staging, Vec::<String>::new());
        assert_eq!(
            std::fs::metadata(&path.0).expect("stat").len(),
            file_bytes(4)
        );
    }

    #[test]
    fn out_of_range_blocks_and_sizes_are_refused() {
        let path = TempPath::new("range");
        let mut store = FileStore::create(&path.0, 3).expect("create");
        assert_eq!(read(&mut store, 3), Err(StoreError::OutOfRange(3)));
        let write = store.write_block(u64::MAX, &pattern(0, 1));
        assert_eq!(write, Err(StoreError::OutOfRange(u64::MAX)));
        assert_eq!(store.scrub(), Ok(vec![]));
        for blocks in [0, BLOCK_COUNT_MAX + 1] {
            let path = TempPath::new("size");
            let error = FileStore::create(&path.0, blocks).expect_err("no such size");
            assert!(
                matches!(error, FileStoreError::BlockCountInvalid { .. }),
                "{error}"
            );
            assert!(!path.0.exists());
        }
    }

    #[test]
    fn records_never_cross_a_page() {
        let path = TempPath::new("pages");
        let store = FileStore::create(&path.0, 100).expect("create");
        let page = PAGE_BYTES as u64;
        let mut end = RECORDS_FIRST_PAGE * page;
        for block in 0..100 {
            let at = store.record_offset(block).expect("in range");
            assert!(at >= end, "block {block} overlaps the one before");
            end = at + RECORD_BYTES as u64;
            assert_eq!(at / page, (end - 1) / page, "block {block} crosses a page");
        }
        assert!(end <= file_bytes(100));
    }

    /// A disk with a label in one slot and none in the other.
    fn template() -> &'static [u8] {
        static TEMPLATE: OnceLock<Vec<u8>> = OnceLock::new();
        TEMPLATE.get_or_init(|| {
            let path = TempPath::new("template");
            let mut store = FileStore::create(&path.0, 9).expect("create");
            store.write_block(8, &pattern(8, 1)).expect("write");
            store.set_label(Some(label(1))).expect("label");
            drop(store);
            std::fs::read(&path.0).expect("read the template")
        })
    }

    #[test]
    fn mutated_headers_never_panic_open() {
        fn prop(flips: Vec<(u16, u8)>, cut: u16, fix: bool) -> bool {
            let mut bytes = template().to_vec();
            // Aim at what open reads: the header and the two slots.
            let regions = [
                (0, HEADER_BYTES),
                (PAGE_BYTES, SLOT_BYTES),
                (2 * PAGE_BYTES, SLOT_BYTES),
            ];
            for (at, mask) in flips {
                let (start, len) = regions[usize::from(at) % regions.len()];
                bytes[start + usize::from(at / 3) % len] ^= mask;
            }
            if fix {
                fix_checksums(&mut bytes);
            }
            if cut % 4 == 0 {
                bytes.truncate(usize::from(cut / 4) % bytes.len());
            }
            let path = TempPath::new("prop");
            std::fs::write(&path.0, &bytes).expect("write");
            match FileStore::open(&path.0) {
                Err(_) => true,
                // A disk that opens is whole: its length is what its header
                // says, and every block reads or is named by a scrub.
                Ok(mut store) => {
                    file_bytes(store.block_count()) == bytes.len() as u64
                        && store.block_count() <= BLOCK_COUNT_MAX
                        && store.scrub().is_ok()
                }
            }
        }
        QuickCheck::new()
            .tests(500)
            .quickcheck(prop as fn(Vec<(u16, u8)>, u16, bool) -> bool);
    }

    /// Switches the test binary, run as a child, into the writer.
    const WRITER_ENV: &str = "LOCKSTEP_FILESTORE_WRITER";
    /// The writer's line on stdout once it has the disk open.
    const WRITER_READY: &str = "lockstep-filestore-writer-ready";
    /// Lines of the writer's stdout read before giving up on it.
    const WRITER_LINES_MAX: usize = 64;
    /// Rounds the writer does if it is never killed (it always is, long
    /// before: a round takes two fsyncs, so this bounds a runaway writer
    /// to seconds, not minutes).
    const WRITER_ROUNDS_MAX: u64 = 100_000;
    const KILLS: u64 = 5;
    const KILL_BLOCKS: u64 = 16;
    const KILL_SEED: u64 = 0x6b69_6c6c;
    const KILL_DELAY_US_MIN: u64 = 2_000;
    const KILL_DELAY_US_MAX: u64 = 30_000;
    const SIGKILL: i32 = 9;

    /// The writer `kill_nine_never_tears_a_record_or_labels_early` runs in
    /// a child and kills; in an ordinary test run it returns at once.
    #[test]
    fn kill_nine_writer_child() {
        let Some(path) = std::env::var_os(WRITER_ENV) else {
            return;
        };
        let mut store = FileStore::open(&path).expect("the writer opens the disk");
        println!("{WRITER_READY}");
        for round in 1..=WRITER_ROUNDS_MAX {
            for block in 0..store.block_count() {
                store
                    .write_block(block, &pattern(block, round))
                    .expect("write");
            }
            store.flush().expect("flush");
            store.set_label(Some(label(round))).expect("label");
        }
    }

    /// Reads the writer's stdout up to its ready line; the reader is kept
    /// open until the writer is dead, so it never writes to a closed pipe.
    fn wait_until_ready(stdout: ChildStdout) -> Lines<BufReader<ChildStdout>> {
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..WRITER_LINES_MAX {
            match lines.next() {
                // libtest prints the test's name on the same line first.
                Some(Ok(line)) if line.ends_with(WRITER_READY) => return lines,
                Some(Ok(_)) => {}
                other => panic!("the writer stopped before it was ready: {other:?}"),
            }
        }
        panic!("the writer said {WRITER_LINES_MAX} lines and never that it was ready");
    }

    /// Checks the disk a killed writer left, and returns its label's round.
    fn check_killed_disk(path: &Path, kill: u64) -> u64 {
        let context = format!("kill {kill} (seed {KILL_SEED:#x})");
        let mut store = FileStore::open(path).expect("the killed writer's disk opens");
        assert_eq!(store.scrub(), Ok(vec![]), "{context}: torn records");
        let labelled = store.label().map_or(0, |l| le_u64(&l, 0));
        assert_eq!(
            store.label().unwrap_or(label(0)),
            label(labelled),
            "{context}"
        );
        let mut previous = u64::MAX;
        for block in 0..KILL_BLOCKS {
            let data = read(&mut store, block).expect("scrubbed");
            let round = round_of(block, &data)
                .unwrap_or_else(|| panic!("{context}: block {block} holds nothing written"));
            assert!(round <= WRITER_ROUNDS_MAX, "{context}: block {block}");
            // The label claims only durable writes: none older than it.
            assert!(
                round >= labelled,
                "{context}: block {block} at round {round}, label {labelled}"
            );
            // The writer labels every round, and writes blocks in order.
            assert!(
                round <= labelled + 1,
                "{context}: block {block} at round {round}, label {labelled}"
            );
            assert!(
                round <= previous,
                "{context}: block {block} at round {round} after {previous}"
            );
            previous = round;
        }
        labelled
    }

    #[test]
    fn kill_nine_never_tears_a_record_or_labels_early() {
        let exe = std::env::current_exe().expect("the test binary");
        let mut rng = SplitMix64::new(KILL_SEED);
        let mut labelled_kills = 0;
        for kill in 0..KILLS {
            let path = TempPath::new("kill");
            drop(FileStore::create(&path.0, KILL_BLOCKS).expect("create"));
            let mut child = Command::new(&exe)
                .args(["--exact", "devices::file::tests::kill_nine_writer_child"])
                .args(["--nocapture", "--test-threads=1"])
                .env(WRITER_ENV, &path.0)
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the writer");
            let stdout = wait_until_ready(child.stdout.take().expect("piped"));
            let delay_us = rng.range(KILL_DELAY_US_MIN, KILL_DELAY_US_MAX);
            std::thread::sleep(Duration::from_micros(delay_us));
            child.kill().expect("SIGKILL the writer");
            let status = child.wait().expect("reap the writer");
            drop(stdout);
            assert_eq!(status.signal(), Some(SIGKILL), "kill {kill}: {status}");
            let labelled = check_killed_disk(&path.0, kill);
            println!("kill {kill}: after {delay_us} us, label at round {labelled}");
            labelled_kills += u64::from(labelled > 0);
        }
        assert!(
            labelled_kills > 0,
            "no writer got as far as a label: nothing was checked"
        );
    }
}
