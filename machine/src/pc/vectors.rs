//! A set of the 256 interrupt vectors: the layout of the local APIC's
//! IRR, ISR and TMR (eight 32-bit registers, vector `v` is bit `v % 32`
//! of register `v / 32`).

use crate::codec::{DecodeError, Reader, Writer};

/// An interrupt vector, 0..=255. Vectors 0..=15 are reserved for
/// exceptions: the local APIC refuses them as interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vector(pub u8);

impl Vector {
    /// The lowest vector the local APIC accepts as an interrupt.
    pub const FIRST_LEGAL: u8 = 16;

    /// The priority class: the vector's high nibble.
    pub fn class(self) -> u8 {
        self.0 >> 4
    }

    /// Whether the local APIC accepts this vector (16..=255).
    pub fn is_legal(self) -> bool {
        self.0 >= Vector::FIRST_LEGAL
    }
}

/// 256 bits, one per vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VectorSet([u32; 8]);

impl VectorSet {
    /// Whether `vector` is in the set.
    pub fn contains(&self, vector: Vector) -> bool {
        let (word, bit) = Self::at(vector);
        self.0[word] & bit != 0
    }

    /// Adds `vector`.
    pub fn insert(&mut self, vector: Vector) {
        let (word, bit) = Self::at(vector);
        self.0[word] |= bit;
    }

    /// Removes `vector`.
    pub fn remove(&mut self, vector: Vector) {
        let (word, bit) = Self::at(vector);
        self.0[word] &= !bit;
    }

    /// The highest vector in the set.
    pub fn highest(&self) -> Option<Vector> {
        let (word, bits) = self.0.iter().enumerate().rev().find(|(_, w)| **w != 0)?;
        let bit = 31 - bits.leading_zeros();
        Some(Vector(
            u8::try_from(word * 32).expect("8 words") + bit as u8,
        ))
    }

    /// Whether no vector is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// Register `index` (0..8) of the set as the APIC page shows it.
    pub fn register(&self, index: usize) -> u32 {
        self.0[index]
    }

    fn at(vector: Vector) -> (usize, u32) {
        (usize::from(vector.0 / 32), 1 << (vector.0 % 32))
    }

    pub(crate) fn save(&self, w: &mut Writer) {
        for word in self.0 {
            w.u32(word);
        }
    }

    pub(crate) fn restore(r: &mut Reader<'_>) -> Result<VectorSet, DecodeError> {
        let mut set = VectorSet::default();
        for word in &mut set.0 {
            *word = r.u32()?;
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_is_the_top_bit_across_registers() {
        let mut set = VectorSet::default();
        assert_eq!(set.highest(), None);
        assert!(set.is_empty());
        for v in [0x20, 0x31, 0xff, 0x40] {
            set.insert(Vector(v));
        }
        assert_eq!(set.highest(), Some(Vector(0xff)));
        set.remove(Vector(0xff));
        assert_eq!(set.highest(), Some(Vector(0x40)));
        assert_eq!(
            set.register(1),
            1 << 0 | 1 << 17,
            "0x20 and 0x31 in register 1"
        );
        assert_eq!(set.register(2), 1, "0x40 in register 2");
        assert!(set.contains(Vector(0x31)));
        assert!(!set.contains(Vector(0x32)));
    }

    #[test]
    fn class_and_legality() {
        assert_eq!(Vector(0x3f).class(), 3);
        assert!(!Vector(15).is_legal());
        assert!(Vector(16).is_legal());
    }
}
