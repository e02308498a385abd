//! How the proxy keys a request for routing: its text (the default), its token ids (with a
//! tokenizer), the engine's block hashes of its tokens (with a tokenizer and KV events, or with
//! a tokenizer and replica sync), or chained keys of its text's chunks (replica sync without a
//! tokenizer: replicas share block keys, which a peer can record without the prompt).
#![allow(dead_code)]

use cache_aware_router::{
    text_block_keys, BlockHasher, CacheAwarePolicy, LoadTicket, RouteError, VllmSha256Cbor,
};
use std::path::Path;
use tokenizers::Tokenizer;

pub(crate) enum Keys {
    /// `route(model, text)`: the approximate tree over chars.
    Text,
    /// `route_tokens(model, ids)`: the approximate tree over tokens.
    Tokens(Box<Tokenizer>),
    /// `route_blocks(model, keys)`: the engines' KV events and the router's own decisions.
    Blocks(Box<Tokenizer>, VllmSha256Cbor),
    /// `route_blocks(model, keys)` over `text_block_keys(text, CHUNK_BYTES)`.
    Chunks,
}

/// Bytes of text per key when replicas route text by chunk keys.
pub(crate) const CHUNK_BYTES: usize = 64;

impl Keys {
    /// Tokens with the tokenizer at `path` (a Hugging Face `tokenizer.json`), and block hashes
    /// as vLLM computes them if `blocks` gives (block size, PYTHONHASHSEED).
    pub(crate) fn load(path: &Path, blocks: Option<(usize, &str)>) -> Result<Self, String> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| format!("--tokenizer {}: cannot load it ({e})", path.display()))?;
        Ok(match blocks {
            Some((size, seed)) => {
                Keys::Blocks(Box::new(tokenizer), VllmSha256Cbor::new(size, seed))
            }
            None => Keys::Tokens(Box::new(tokenizer)),
        })
    }

    /// Routes `text` for `model` by this key; the block keys it was routed by, if any.
    pub(crate) fn route(
        &self,
        policy: &CacheAwarePolicy,
        model: &str,
        text: &str,
    ) -> Result<(LoadTicket, Option<Vec<u64>>), RouteError> {
        // The engine tokenizes a completion prompt with its special tokens (BOS).
        let ids = |t: &Tokenizer| {
            t.encode(text, true)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        };
        let blocks = |keys: Vec<u64>| {
            policy
                .route_blocks(model, &keys)
                .map(|ticket| (ticket, Some(keys)))
        };
        match self {
            Keys::Text => policy.route(model, text).map(|t| (t, None)),
            Keys::Tokens(t) => policy.route_tokens(model, &ids(t)).map(|t| (t, None)),
            Keys::Blocks(t, hasher) => blocks(hasher.block_keys(&ids(t))),
            Keys::Chunks => blocks(text_block_keys(text, CHUNK_BYTES)),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Keys::Text => "text",
            Keys::Tokens(_) => "tokens",
            Keys::Blocks(..) => "blocks",
            Keys::Chunks => "text chunks",
        }
    }
}
