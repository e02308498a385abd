//! Shared test helpers: a seeded RNG, a plain sequential reference tree and a worker fleet.
#![allow(dead_code)]

pub(crate) mod reference;

use cache_aware_router::{BasicWorkerBuilder, Tree, Worker};
use std::sync::Arc;

/// `n` healthy workers of the default model, at `http://w{i}:8000`.
pub(crate) fn fleet(n: usize) -> Vec<Arc<dyn Worker>> {
    (0..n)
        .map(|i| Arc::new(BasicWorkerBuilder::new(format!("http://w{i}:8000")).build()) as _)
        .collect()
}

/// The accounting invariant at rest: the counters equal a walk of the nodes, and the tree-wide
/// total equals the sum over tenants.
pub(crate) fn assert_accounting(tree: &Tree) {
    let counted = tree.get_tenant_char_count();
    assert_eq!(counted, tree.get_used_size_per_tenant(), "counters vs walk");
    assert_eq!(
        counted.values().sum::<usize>(),
        tree.total_units(),
        "total vs tenants"
    );
}

/// xorshift64*: small, seeded, reproducible.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Random text over a small alphabet with 1-, 2- and 3-byte chars, often extending `base`.
pub(crate) fn text(rng: &mut Rng, base: Option<&str>, max_len: usize) -> String {
    const ALPHABET: &[char] = &['a', 'b', 'c', ' ', 'é', 'ê', '你', '好'];
    let mut s = String::new();
    if let Some(base) = base {
        let chars: Vec<char> = base.chars().collect();
        let keep = rng.below(chars.len() + 1);
        s.extend(&chars[..keep]);
    }
    for _ in 0..rng.below(max_len + 1) {
        s.push(*rng.pick(ALPHABET));
    }
    s
}

/// Arbitrary UTF-8: any scalar value, weighted towards ASCII, 2-, 3- and 4-byte chars that share
/// lead bytes (so byte-level matching is tempted to cut inside a char), often extending a long
/// `base` so texts share long prefixes.
pub(crate) fn arbitrary_text(rng: &mut Rng, base: Option<&str>, max_len: usize) -> String {
    let mut s = String::new();
    if let Some(base) = base {
        let chars: Vec<char> = base.chars().collect();
        let keep = chars.len() - rng.below(chars.len().min(8) + 1);
        s.extend(&chars[..keep]);
    }
    for _ in 0..rng.below(max_len + 1) {
        let c = match rng.below(6) {
            0 | 1 => char::from(b'a' + rng.below(3) as u8),
            2 => char::from_u32(0xE0 + rng.below(4) as u32).unwrap(), // à á â ã: lead byte C3
            3 => char::from_u32(0x4F60 + rng.below(3) as u32).unwrap(), // 你 and neighbours
            4 => char::from_u32(0x1F600 + rng.below(3) as u32).unwrap(), // 4-byte emoji
            _ => loop {
                if let Some(c) = char::from_u32(rng.next() as u32 % 0x11_0000) {
                    break c;
                }
            },
        };
        s.push(c);
    }
    s
}
