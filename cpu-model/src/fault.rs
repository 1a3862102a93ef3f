//! Turning a guest fault into an error a person can act on: the vCPU, its
//! rip and the instructions there, disassembled by iced-x86.

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

/// Instructions shown from the faulting rip on.
const LISTING_INSTRUCTIONS: usize = 6;

/// Disassembles up to `LISTING_INSTRUCTIONS` instructions of `bytes`, which
/// were read at `rip`.
pub fn listing(bytes: &[u8], rip: u64) -> String {
    let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    let mut out = String::new();
    for instruction in decoder.iter().take(LISTING_INSTRUCTIONS) {
        let mut text = String::new();
        formatter.format(&instruction, &mut text);
        let start = (instruction.ip() - rip) as usize;
        let raw: Vec<String> = bytes[start..start + instruction.len()]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let marker = if instruction.ip() == rip { "=>" } else { "  " };
        out.push_str(&format!(
            "{marker} {:016x}  {:<24} {text}\n",
            instruction.ip(),
            raw.join(" ")
        ));
    }
    if out.is_empty() {
        out.push_str("   (no bytes readable at rip)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_the_faulting_instruction() {
        let text = listing(&[0x0f, 0x0b, 0x90], 0x1000);
        assert!(text.starts_with("=> 0000000000001000  0f 0b"), "{text}");
        assert!(text.contains("ud2"), "{text}");
        assert!(text.contains("nop"), "{text}");
    }
}
