//! Key units: what a tree's keys are made of, and the byte-level walking primitives for each.
//!
//! The tree stores every key as bytes (labels are slices of shared byte buffers) and asks its
//! key unit four things: the bytes of a key, the child-array key of the unit at a byte offset,
//! the longest common prefix of two byte strings cut back to a unit boundary, and how many
//! units a byte string holds. Everything else (sharding, splits, tenants, eviction, accounting)
//! is the same code for every unit, and sizes are counted in units.
//!
//! - [`Text`]: `str`, one unit per char (Unicode scalar value), as in the seed.
//! - [`Tokens`]: `[u32]` token ids, one unit per token.
//! - [`Blocks`]: `[u64]` block hashes, one unit per KV block.
//!
//! Integer units are stored in native byte order: the bytes never leave the process.

/// What a tree's keys are made of. Implemented by [`Text`], [`Tokens`] and [`Blocks`].
///
/// A unit's byte width is fixed for integer units and 1–4 for chars; `common_prefix` must stop
/// on a unit boundary of both inputs, and `first` must be injective on units, or matches
/// compare the wrong edges.
pub trait KeyUnit: Send + Sync + 'static {
    /// The key a caller passes: `str`, `[u32]` or `[u64]`.
    type Key: ?Sized;

    /// The key's bytes, as the tree stores them.
    fn bytes(key: &Self::Key) -> &[u8];

    /// The unit at byte `pos` of `bytes` (a unit boundary), as a child-array key.
    fn first(bytes: &[u8], pos: usize) -> u64;

    /// Length in bytes of the longest common prefix of `a` and `b`, on a unit boundary.
    fn common_prefix(a: &[u8], b: &[u8]) -> usize;

    /// Units in `bytes` (which start and end on unit boundaries).
    fn count(bytes: &[u8]) -> usize;
}

/// Text keys (`str`), counted in chars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Text;

/// Token-id keys (`[u32]`), counted in tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens;

/// Block-hash keys (`[u64]`), one unit per KV block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Blocks;

impl KeyUnit for Text {
    type Key = str;

    #[inline]
    fn bytes(key: &str) -> &[u8] {
        key.as_bytes()
    }

    /// The char at `pos`, with an ASCII fast path.
    #[inline]
    fn first(bytes: &[u8], pos: usize) -> u64 {
        let lead = bytes[pos];
        if lead < 0x80 {
            return lead as u64;
        }
        let (width, bits) = match lead {
            0xF0.. => (4, lead & 0x07),
            0xE0.. => (3, lead & 0x0F),
            _ => (2, lead & 0x1F),
        };
        let end = (pos + width).min(bytes.len());
        bytes[pos + 1..end]
            .iter()
            .fold(bits as u64, |c, &b| (c << 6) | (b & 0x3F) as u64)
    }

    /// Backed off to a char boundary.
    #[inline]
    fn common_prefix(a: &[u8], b: &[u8]) -> usize {
        let i = byte_prefix(a, b);
        if i < a.len().min(b.len()) {
            back_to_boundary(a, i)
        } else {
            i
        }
    }

    #[inline]
    fn count(bytes: &[u8]) -> usize {
        char_count(bytes)
    }
}

/// The integer units: fixed width, native byte order.
macro_rules! integer_unit {
    ($unit:ty, $int:ty) => {
        impl KeyUnit for $unit {
            type Key = [$int];

            #[inline]
            fn bytes(key: &[$int]) -> &[u8] {
                // SAFETY: the integers have no padding and any byte is a valid `u8`; the byte
                // slice covers exactly the key's memory, with alignment 1, for its lifetime.
                unsafe {
                    std::slice::from_raw_parts(
                        key.as_ptr().cast::<u8>(),
                        std::mem::size_of_val(key),
                    )
                }
            }

            #[inline]
            fn first(bytes: &[u8], pos: usize) -> u64 {
                const W: usize = std::mem::size_of::<$int>();
                let unit: [u8; W] = bytes[pos..pos + W].try_into().expect("one unit");
                <$int>::from_ne_bytes(unit) as u64
            }

            #[inline]
            fn common_prefix(a: &[u8], b: &[u8]) -> usize {
                byte_prefix(a, b) / std::mem::size_of::<$int>() * std::mem::size_of::<$int>()
            }

            #[inline]
            fn count(bytes: &[u8]) -> usize {
                bytes.len() / std::mem::size_of::<$int>()
            }
        }
    };
}

integer_unit!(Tokens, u32);
integer_unit!(Blocks, u64);

/// Chars in UTF-8 `bytes`: its bytes less its continuation bytes (`0x80..=0xBF`).
///
/// Counted in 128-byte chunks into a `u8` (at most 128 per chunk, so it cannot wrap), a loop
/// the compiler vectorises with baseline SSE2: twice as fast as std's word-at-a-time
/// `chars().count()` on these machines, and tails are counted on every request.
#[inline]
pub(crate) fn char_count(bytes: &[u8]) -> usize {
    const CHUNK: usize = 128;
    let is_continuation = |b: u8| ((b as i8) < -64) as u8;
    let mut chunks = bytes.chunks_exact(CHUNK);
    let mut continuations = 0;
    for chunk in &mut chunks {
        let n = chunk
            .iter()
            .fold(0u8, |n, &b| n.wrapping_add(is_continuation(b)));
        continuations += n as usize;
    }
    for &b in chunks.remainder() {
        continuations += is_continuation(b) as usize;
    }
    bytes.len() - continuations
}

/// Length of the longest common prefix of `a` and `b`, in bytes.
///
/// Skips equal 1 KiB blocks with slice equality (glibc's vectorised `bcmp`, the same routine
/// the floor's `a == b` uses), then compares 32 bytes at a time within the block that differs
/// and finds the first differing byte. Bytes before the mismatching block are read once; that
/// block at most twice.
#[inline]
fn byte_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    const BLOCK: usize = 1024;
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    const CHUNK: usize = 32;
    while i + CHUNK <= n {
        let x: &[u8; CHUNK] = a[i..i + CHUNK].try_into().expect("chunk length");
        let y: &[u8; CHUNK] = b[i..i + CHUNK].try_into().expect("chunk length");
        if x != y {
            break;
        }
        i += CHUNK;
    }
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().expect("word length"));
        let y = u64::from_le_bytes(b[i..i + 8].try_into().expect("word length"));
        let diff = x ^ y;
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Moves a mismatch offset back to the start of the char it falls in. The bytes before `i` are
/// equal in both strings, so a boundary in one is a boundary in the other.
#[inline]
fn back_to_boundary(bytes: &[u8], mut i: usize) -> usize {
    while i > 0 && i < bytes.len() && (bytes[i] & 0xC0) == 0x80 {
        i -= 1;
    }
    i
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    fn text_prefix(a: &str, b: &str) -> usize {
        Text::common_prefix(a.as_bytes(), b.as_bytes())
    }

    #[test]
    fn char_count_matches_std_across_chunk_boundaries() {
        let chars = ['a', 'é', '€', '😀'];
        for len in [0, 1, 127, 128, 129, 255, 256, 257, 1000] {
            for (k, first) in chars.iter().enumerate() {
                // Mixed widths, so multi-byte chars straddle the 128-byte chunk edges.
                let s: String = (0..len)
                    .map(|i| chars[(i * 7 + k) % 4].max(*first))
                    .collect();
                assert_eq!(
                    char_count(s.as_bytes()),
                    s.chars().count(),
                    "len {len}, from {first}"
                );
            }
        }
        assert_eq!(
            char_count("😀".repeat(64).as_bytes()),
            64,
            "96 continuation bytes per chunk"
        );
    }

    #[test]
    fn text_first_decodes_every_width() {
        for c in ['a', 'é', '€', '😀', '\u{7FF}', '\u{FFFF}', '\u{10FFFF}'] {
            let s = format!("x{c}y");
            assert_eq!(Text::first(s.as_bytes(), 1), c as u64, "{c:?}");
        }
    }

    #[test]
    fn common_prefix_never_cuts_a_char() {
        assert_eq!(text_prefix("你好嗎", "你好喔"), "你好".len());
        assert_eq!(text_prefix("你好嗎", "你心情好嗎"), "你".len());
        // é = C3 A9, ê = C3 AA: the shared lead byte is not a match.
        assert_eq!(text_prefix("é", "ê"), 0);
        assert_eq!(text_prefix("abc", "abc"), 3);
        assert_eq!(text_prefix("abc", "abcd"), 3);
        assert_eq!(text_prefix("", "abc"), 0);
    }

    #[test]
    fn common_prefix_matches_naive_on_long_inputs() {
        let base: String = (0..300)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        for cut in [0, 1, 7, 8, 9, 31, 32, 33, 64, 100, 299] {
            let mut other = base.clone().into_bytes();
            other[cut] = b'#';
            let other = String::from_utf8(other).unwrap();
            assert_eq!(text_prefix(&base, &other), cut, "cut at {cut}");
        }
        let multi = "é".repeat(100);
        let mut other = multi.clone();
        other.push('x');
        assert_eq!(text_prefix(&multi, &other), multi.len());
        let changed = format!("{}ê{}", "é".repeat(20), "é".repeat(79));
        assert_eq!(text_prefix(&multi, &changed), 40);
    }

    #[test]
    fn integer_units_stop_on_their_boundaries() {
        // Tokens that differ in their high byte only: the shared low bytes are no match.
        let a: Vec<u32> = (0..40).collect();
        let mut b = a.clone();
        b[33] |= 0x0100_0000;
        let (ab, bb) = (Tokens::bytes(&a), Tokens::bytes(&b));
        assert_eq!(Tokens::common_prefix(ab, bb), 33 * 4);
        assert_eq!(Tokens::count(&ab[..33 * 4]), 33);
        assert_eq!(Tokens::first(ab, 5 * 4), 5);
        let x = [u64::MAX, 7, 1 << 40];
        let mut y = x;
        y[2] |= 1;
        let (xb, yb) = (Blocks::bytes(&x), Blocks::bytes(&y));
        assert_eq!(Blocks::common_prefix(xb, yb), 16);
        assert_eq!(Blocks::common_prefix(xb, xb), 24);
        assert_eq!(Blocks::first(xb, 0), u64::MAX);
        assert_eq!(Blocks::first(xb, 16), 1 << 40);
        assert_eq!(Blocks::count(xb), 3);
    }
}
