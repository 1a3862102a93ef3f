//! Small durable records: a node's generation, the witness's grant. Each
//! is one file replaced atomically (write a temporary file, fsync it,
//! rename it over the old one, fsync the directory), framed with a magic,
//! a version and a crc32c, so a torn or foreign file is an error, never a
//! value.

use protocol::{Generation, Grant, NodeId};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"LSTPDUR1";
const VERSION: u8 = 1;
/// Largest body of a durable record.
pub const RECORD_BYTES_MAX: usize = 256;

/// A durable record that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// The file system failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a whole record of this kind.
    #[error("{}: not a valid record ({why})", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DurableError + '_ {
    move |source| DurableError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces the record at `path` with `body`, durably: once this returns,
/// a crash at any instant leaves either this body or none newer.
pub fn write(path: &Path, kind: u8, body: &[u8]) -> Result<(), DurableError> {
    assert!(body.len() <= RECORD_BYTES_MAX, "durable records are small");
    let mut bytes = Vec::with_capacity(body.len() + 16);
    bytes.extend_from_slice(MAGIC);
    bytes.push(VERSION);
    bytes.push(kind);
    bytes.extend_from_slice(&(body.len() as u16).to_le_bytes());
    bytes.extend_from_slice(body);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(&bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// The body of the record at `path`, `None` if there is no file.
pub fn read(path: &Path, kind: u8) -> Result<Option<Vec<u8>>, DurableError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let invalid = |why| DurableError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    if bytes.len() < 16 || bytes.len() > RECORD_BYTES_MAX + 16 {
        return Err(invalid("wrong length"));
    }
    let (framed, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if &framed[..8] != MAGIC {
        return Err(invalid("wrong magic"));
    }
    if crc32c::crc32c(framed) != crc {
        return Err(invalid("checksum mismatch"));
    }
    if framed[8] != VERSION {
        return Err(invalid("unknown version"));
    }
    if framed[9] != kind {
        return Err(invalid("a record of another kind"));
    }
    let len = usize::from(u16::from_le_bytes([framed[10], framed[11]]));
    if framed.len() != 12 + len {
        return Err(invalid("length does not match"));
    }
    Ok(Some(framed[12..].to_vec()))
}

const KIND_GENERATION: u8 = 1;
const KIND_GRANT: u8 = 2;

/// Persists a node's generation.
pub fn write_generation(path: &Path, generation: Generation) -> Result<(), DurableError> {
    write(path, KIND_GENERATION, &generation.0.to_le_bytes())
}

/// A node's persisted generation, `None` on first start.
pub fn read_generation(path: &Path) -> Result<Option<Generation>, DurableError> {
    let Some(body) = read(path, KIND_GENERATION)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = body.try_into().map_err(|_| DurableError::Invalid {
        path: path.to_path_buf(),
        why: "a generation is 8 bytes",
    })?;
    Ok(Some(Generation(u64::from_le_bytes(bytes))))
}

/// Persists the witness's grant.
pub fn write_grant(path: &Path, grant: Grant) -> Result<(), DurableError> {
    let mut body = grant.generation.0.to_le_bytes().to_vec();
    body.push(grant.holder.0);
    body.push(grant.backup.map_or(0, |_| 1));
    body.push(grant.backup.map_or(0, |b| b.0));
    write(path, KIND_GRANT, &body)
}

/// The witness's persisted grant, `None` on first start.
pub fn read_grant(path: &Path) -> Result<Option<Grant>, DurableError> {
    let Some(body) = read(path, KIND_GRANT)? else {
        return Ok(None);
    };
    let invalid = |why| DurableError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    if body.len() != 11 {
        return Err(invalid("a grant is 11 bytes"));
    }
    let generation = Generation(u64::from_le_bytes(body[..8].try_into().expect("8 bytes")));
    let backup = match body[9] {
        0 => None,
        1 => Some(NodeId(body[10])),
        _ => return Err(invalid("backup flag is 0 or 1")),
    };
    Ok(Some(Grant {
        generation,
        holder: NodeId(body[8]),
        backup,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lockstep-durable-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        dir.join(name)
    }

    #[test]
    fn records_round_trip_and_replace() {
        let path = temp("generation");
        assert_eq!(read_generation(&path).expect("no file"), None);
        write_generation(&path, Generation(3)).expect("write");
        write_generation(&path, Generation(4)).expect("write");
        assert_eq!(read_generation(&path).expect("read"), Some(Generation(4)));
        let grant = Grant {
            generation: Generation(9),
            holder: NodeId(1),
            backup: None,
        };
        let gpath = temp("grant");
        write_grant(&gpath, grant).expect("write");
        assert_eq!(read_grant(&gpath).expect("read"), Some(grant));
        assert!(
            matches!(read_grant(&path), Err(DurableError::Invalid { .. })),
            "a generation is not a grant"
        );
    }

    #[test]
    fn damaged_records_are_errors() {
        let path = temp("damaged");
        write_generation(&path, Generation(7)).expect("write");
        let good = fs::read(&path).expect("read");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            fs::write(&path, &bad).expect("write");
            assert!(read_generation(&path).is_err(), "flip at byte {i} caught");
        }
        for len in 0..good.len() {
            fs::write(&path, &good[..len]).expect("write");
            assert!(
                read_generation(&path).is_err(),
                "truncation to {len} caught"
            );
        }
    }
}
