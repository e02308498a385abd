//! Block hashes of a request's tokens, computed the way the engine computes them, so that a
//! request can be matched against the engine's KV cache events ([`crate::KvIndex`]).
//!
//! Engines differ (hash function, seed, what else enters a block's hash), so the hasher is a
//! trait; [`VllmSha256Cbor`] reproduces vLLM's `sha256_cbor` prefix-caching hash.

use crate::index::fold_hash;
use sha2::{Digest, Sha256};

/// Chained block hashes of a token sequence, as index keys.
pub trait BlockHasher: Send + Sync {
    /// Tokens per block.
    fn block_size(&self) -> usize;

    /// The keys of the full blocks of `tokens`, in order (a trailing partial block has none).
    fn block_keys(&self, tokens: &[u32]) -> Vec<u64>;
}

/// vLLM's block hash with `--prefix-caching-hash-algo sha256_cbor`:
///
/// ```text
/// NONE_HASH    = sha256(cbor(seed))                       seed: the engine's PYTHONHASHSEED
/// hash(block i) = sha256(cbor([hash(block i-1) or NONE_HASH, [token ids of block i], null]))
/// ```
///
/// with canonical CBOR (shortest integer forms), 32-byte digests, and only full blocks hashed;
/// the key of a block is its digest folded by [`fold_hash`] (its last 8 bytes). Reproducible
/// only when the engine runs with a fixed `PYTHONHASHSEED` (without it vLLM seeds `NONE_HASH`
/// from `os.urandom`) and the request has no LoRA adapter, multimodal input or cache salt
/// (vLLM then puts them in the third element). Route such engines in hybrid mode, where a
/// request that hashes differently still finds the router's own record.
#[derive(Debug, Clone)]
pub struct VllmSha256Cbor {
    block_size: usize,
    none_hash: [u8; 32],
}

impl VllmSha256Cbor {
    /// The hasher for an engine with `--block-size block_size` and `PYTHONHASHSEED=seed`.
    /// A `block_size` of 0 is taken as 1.
    pub fn new(block_size: usize, seed: &str) -> Self {
        let mut cbor = Vec::with_capacity(seed.len() + 9);
        cbor_head(&mut cbor, 3, seed.len() as u64);
        cbor.extend_from_slice(seed.as_bytes());
        Self {
            block_size: block_size.max(1),
            none_hash: Sha256::digest(&cbor).into(),
        }
    }
}

impl BlockHasher for VllmSha256Cbor {
    fn block_size(&self) -> usize {
        self.block_size
    }

    fn block_keys(&self, tokens: &[u32]) -> Vec<u64> {
        let mut parent = self.none_hash;
        let mut cbor = Vec::with_capacity(48 + 5 * self.block_size);
        tokens
            .chunks_exact(self.block_size)
            .map(|block| {
                cbor.clear();
                cbor.push(0x83); // an array of 3
                cbor_head(&mut cbor, 2, 32);
                cbor.extend_from_slice(&parent);
                cbor_head(&mut cbor, 4, block.len() as u64);
                for &t in block {
                    cbor_head(&mut cbor, 0, t as u64);
                }
                cbor.push(0xf6); // null: no extra keys
                parent = Sha256::digest(&cbor).into();
                fold_hash(&parent)
            })
            .collect()
    }
}

/// A CBOR item head: major type `major`, argument `n`, in its shortest form.
fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend([m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(n.to_be_bytes());
        }
    }
}

/// Chained keys of a text in chunks of `chunk_bytes` bytes (the last one may be shorter): the
/// block keys replicas route text by when they share decisions (`replica::ReplicaEvent`), so a
/// peer can record a routed prompt from its keys alone. Each key hashes its chunk and the key
/// before it (FNV-1a, then a 64-bit finaliser), so equal keys mean equal prefixes up to a
/// collision (about 2^-64 per pair). A `chunk_bytes` of 0 is taken as 1.
pub fn text_block_keys(text: &str, chunk_bytes: usize) -> Vec<u64> {
    let mut parent = 0x9E37_79B9_7F4A_7C15u64;
    text.as_bytes()
        .chunks(chunk_bytes.max(1))
        .map(|chunk| {
            let fnv = chunk.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let mut z = parent ^ fnv.rotate_left(17);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            parent = z ^ (z >> 31);
            parent
        })
        .collect()
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    #[test]
    fn text_keys_share_a_prefix_exactly_as_far_as_the_text() {
        let a = text_block_keys("abcdefgh-ijklmnop-qrst", 4);
        let b = text_block_keys("abcdefgh-ijklmnop-XYZ", 4);
        assert_eq!(a.len(), 6, "the last chunk may be short");
        assert_eq!(a[..4], b[..4]);
        assert_ne!(a[4], b[4]);
        // Chained: an equal chunk after a different prefix has a different key.
        assert_ne!(
            text_block_keys("xxxxabcd", 4)[1],
            text_block_keys("yyyyabcd", 4)[1]
        );
        assert_eq!(text_block_keys("", 4), Vec::<u64>::new());
        assert_eq!(text_block_keys("ab", 0).len(), 2);
    }
}
