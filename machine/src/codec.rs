//! Little-endian byte writer and bounds-checked reader used by every saved
//! state. The reader never panics: running out of bytes is an error.

/// Error decoding saved state or a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("truncated: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Where the read started.
        offset: usize,
        /// How many bytes it needed.
        needed: usize,
    },
    /// The input is longer than the decoder accepts.
    #[error("too large: {len} bytes, limit {limit}")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The magic number is wrong: not a checkpoint.
    #[error("bad magic")]
    BadMagic,
    /// A version this code does not read.
    #[error("unsupported version {0}")]
    Version(u16),
    /// The checksum does not match the content.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Checksum in the input.
        stored: u32,
        /// Checksum of the content.
        computed: u32,
    },
    /// A field holds a value that cannot be.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// Appends little-endian values to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Writer {
        Writer::default()
    }

    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Writer {
        Writer {
            bytes: Vec::with_capacity(capacity),
        }
    }

    /// Appends a byte.
    pub fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }

    /// Appends a u16.
    pub fn u16(&mut self, value: u16) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    /// Appends a u32.
    pub fn u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    /// Appends a u64.
    pub fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    /// Appends raw bytes (the reader must know their length).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Appends a length-prefixed byte string.
    pub fn blob(&mut self, bytes: &[u8]) {
        self.u32(u32::try_from(bytes.len()).expect("blobs are below 4 GiB"));
        self.raw(bytes);
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads little-endian values from a byte slice, checking every bound.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, offset: 0 }
    }

    /// Takes the next `len` bytes.
    pub fn raw(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let rest = self.bytes.len() - self.offset;
        if len > rest {
            return Err(DecodeError::Truncated {
                offset: self.offset,
                needed: len - rest,
            });
        }
        let slice = &self.bytes[self.offset..self.offset + len];
        self.offset += len;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.raw(N)?);
        Ok(out)
    }

    /// Reads a byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a length-prefixed byte string.
    pub fn blob(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.raw(len)
    }

    /// Reads a count that must not exceed `max` (guards allocations).
    pub fn count(&mut self, max: usize) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        if count > max {
            return Err(DecodeError::Invalid(format!("count {count} above {max}")));
        }
        Ok(count)
    }

    /// Reads tagged, length-prefixed parts (a u8 tag, a blob) to the end:
    /// `claim(tag, blob)` restores a part it knows and says whether it
    /// did. A part nobody claims, or a tag seen twice, is an error.
    pub fn parts(
        &mut self,
        mut claim: impl FnMut(u8, &'a [u8]) -> Result<bool, DecodeError>,
    ) -> Result<(), DecodeError> {
        let mut seen = std::collections::BTreeSet::new();
        while !self.at_end() {
            let tag = self.u8()?;
            let blob = self.blob()?;
            if !seen.insert(tag) || !claim(tag, blob)? {
                return Err(DecodeError::Invalid(format!(
                    "part {tag}: unknown or repeated"
                )));
            }
        }
        Ok(())
    }

    /// Whether every byte was read.
    pub fn at_end(&self) -> bool {
        self.offset == self.bytes.len()
    }

    /// Errors unless every byte was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.offset != self.bytes.len() {
            return Err(DecodeError::Invalid(format!(
                "{} trailing bytes",
                self.bytes.len() - self.offset
            )));
        }
        Ok(())
    }
}
