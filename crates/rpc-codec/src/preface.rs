//! The connection preface both peers send first.

/// The 8 bytes each peer sends before its first frame.
///
/// Built the way PNG builds its signature: a first byte with the high bit set catches 7-bit
/// transports, `K E L` names the protocol, `CR LF` catches line-ending conversion, `0x1A` stops a
/// DOS `type`, and a final `LF` catches the opposite conversion.
pub const MAGIC: [u8; 8] = [0x8B, b'K', b'E', b'L', 0x0D, 0x0A, 0x1A, 0x0A];

/// Compares received bytes with the preface: `Ok(true)` when all 8 are there and match,
/// `Ok(false)` when the bytes so far match but more are needed, `Err(offset)` at the first byte
/// that differs, so garbage is refused as soon as its first wrong byte arrives.
pub(crate) fn check(received: &[u8]) -> Result<bool, usize> {
    for (offset, (got, want)) in received.iter().zip(MAGIC.iter()).enumerate() {
        if got != want {
            return Err(offset);
        }
    }
    Ok(received.len() >= MAGIC.len())
}
