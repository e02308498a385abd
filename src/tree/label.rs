//! Edge labels: immutable slices of shared text, and the byte-level walking primitives.
//!
//! A label never changes once its node is published, so readers compare against it without any
//! synchronisation. A split gives both halves a slice of the same buffer instead of copying it.
//! All offsets are byte offsets on char boundaries; `common_prefix` only ever stops on one.

use std::sync::Arc;

/// Bytes of a shared buffer outside a label that never make it worth a copy of its own.
const WASTE_SLACK: usize = 64;

/// A slice `start..end` of a shared UTF-8 buffer.
#[derive(Clone)]
pub(crate) struct Label {
    buf: Arc<str>,
    start: usize,
    end: usize,
}

impl Label {
    pub(crate) fn new(text: &str) -> Self {
        Self {
            buf: Arc::from(text),
            start: 0,
            end: text.len(),
        }
    }

    pub(crate) fn empty() -> Self {
        Self::new("")
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.buf[self.start..self.end]
    }

    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the label is a small part of the buffer it shares: once the nodes holding the
    /// rest are gone, a copy of its own frees the rest (`compacted`).
    pub(crate) fn wastes(&self) -> bool {
        self.buf.len() > 2 * self.len() + WASTE_SLACK
    }

    /// This label, in a buffer of its own if it `wastes` its buffer, else sharing it.
    pub(crate) fn compacted(&self) -> Label {
        if self.wastes() {
            Label::new(self.as_str())
        } else {
            self.clone()
        }
    }

    /// The labels of the two halves when split at byte `at` (a char boundary, `0 < at < len`).
    pub(crate) fn split_at(&self, at: usize) -> (Label, Label) {
        debug_assert!(at > 0 && at < self.len() && self.as_str().is_char_boundary(at));
        let upper = Label {
            buf: Arc::clone(&self.buf),
            start: self.start,
            end: self.start + at,
        };
        let lower = Label {
            buf: Arc::clone(&self.buf),
            start: self.start + at,
            end: self.end,
        };
        (upper, lower)
    }
}

/// The first char of `text[pos..]` as a `u32` key, with an ASCII fast path.
#[inline]
pub(crate) fn first_char(text: &str, pos: usize) -> u32 {
    let b = text.as_bytes()[pos];
    if b < 0x80 {
        b as u32
    } else {
        text[pos..].chars().next().map_or(0, |c| c as u32)
    }
}

/// Chars in `s`: its bytes less its UTF-8 continuation bytes (`0x80..=0xBF`).
///
/// Counted in 128-byte chunks into a `u8` (at most 128 per chunk, so it cannot wrap), a loop
/// the compiler vectorises with baseline SSE2: twice as fast as std's word-at-a-time
/// `chars().count()` on these machines, and tails are counted on every request.
#[inline]
pub(crate) fn char_count(s: &str) -> usize {
    const CHUNK: usize = 128;
    let is_continuation = |b: u8| ((b as i8) < -64) as u8;
    let mut chunks = s.as_bytes().chunks_exact(CHUNK);
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
    s.len() - continuations
}

/// Length in bytes of the longest common prefix of `label` and `text`, backed off to a char
/// boundary.
///
/// Skips equal 1 KiB blocks with slice equality (glibc's vectorised `bcmp`, the same routine
/// the floor's `a == b` uses), then compares 32 bytes at a time within the block that differs
/// and finds the first differing byte. Bytes before the mismatching block are read once; that
/// block at most twice.
#[inline]
pub(crate) fn common_prefix(label: &str, text: &str) -> usize {
    let (a, b) = (label.as_bytes(), text.as_bytes());
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
            i += (diff.trailing_zeros() / 8) as usize;
            return back_to_boundary(a, i);
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    if i < n {
        back_to_boundary(a, i)
    } else {
        i
    }
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

    #[test]
    fn char_count_matches_std_across_chunk_boundaries() {
        let chars = ['a', 'é', '€', '😀'];
        for len in [0, 1, 127, 128, 129, 255, 256, 257, 1000] {
            for (k, first) in chars.iter().enumerate() {
                // Mixed widths, so multi-byte chars straddle the 128-byte chunk edges.
                let s: String = (0..len)
                    .map(|i| chars[(i * 7 + k) % 4].max(*first))
                    .collect();
                assert_eq!(char_count(&s), s.chars().count(), "len {len}, from {first}");
            }
        }
        assert_eq!(
            char_count(&"😀".repeat(64)),
            64,
            "96 continuation bytes per chunk"
        );
    }

    #[test]
    fn common_prefix_never_cuts_a_char() {
        assert_eq!(common_prefix("你好嗎", "你好喔"), "你好".len());
        assert_eq!(common_prefix("你好嗎", "你心情好嗎"), "你".len());
        // é = C3 A9, ê = C3 AA: the shared lead byte is not a match.
        assert_eq!(common_prefix("é", "ê"), 0);
        assert_eq!(common_prefix("abc", "abc"), 3);
        assert_eq!(common_prefix("abc", "abcd"), 3);
        assert_eq!(common_prefix("", "abc"), 0);
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
            assert_eq!(common_prefix(&base, &other), cut, "cut at {cut}");
        }
        let multi = "é".repeat(100);
        let mut other = multi.clone();
        other.push('x');
        assert_eq!(common_prefix(&multi, &other), multi.len());
        let changed = format!("{}ê{}", "é".repeat(20), "é".repeat(79));
        assert_eq!(common_prefix(&multi, &changed), 40);
    }

    #[test]
    fn split_shares_the_buffer() {
        let l = Label::new("héllo");
        let (u, d) = l.split_at(3);
        assert_eq!((u.as_str(), d.as_str()), ("hé", "llo"));
        assert!(Arc::ptr_eq(&u.buf, &d.buf));
        let long = Label::new(&"x".repeat(1000));
        let (short, _) = long.split_at(10);
        assert!(short.wastes());
        let own = short.compacted();
        assert_eq!((own.as_str(), own.buf.len()), ("x".repeat(10).as_str(), 10));
        assert!(!own.wastes() && !long.wastes());
        assert_eq!(first_char("héllo", 1), 'é' as u32);
        assert_eq!(char_count("héllo"), 5);
    }
}
