//! How the proxy keys a request for routing: its text (the default), its token ids (with a
//! tokenizer), or the engine's block hashes of its tokens (with a tokenizer and KV events).
#![allow(dead_code)]

use cache_aware_router::{BlockHasher, CacheAwarePolicy, LoadTicket, RouteError, VllmSha256Cbor};
use std::path::Path;
use tokenizers::Tokenizer;

pub(crate) enum Keys {
    /// `route(model, text)`: the approximate tree over chars.
    Text,
    /// `route_tokens(model, ids)`: the approximate tree over tokens.
    Tokens(Box<Tokenizer>),
    /// `route_blocks(model, keys)`: the engines' KV events and the router's own decisions.
    Blocks(Box<Tokenizer>, VllmSha256Cbor),
}

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

    /// Routes `text` for `model` by this key.
    pub(crate) fn route(
        &self,
        policy: &CacheAwarePolicy,
        model: &str,
        text: &str,
    ) -> Result<LoadTicket, RouteError> {
        // The engine tokenizes a completion prompt with its special tokens (BOS).
        let ids = |t: &Tokenizer| {
            t.encode(text, true)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        };
        match self {
            Keys::Text => policy.route(model, text),
            Keys::Tokens(t) => policy.route_tokens(model, &ids(t)),
            Keys::Blocks(t, hasher) => policy.route_blocks(model, &hasher.block_keys(&ids(t))),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Keys::Text => "text",
            Keys::Tokens(_) => "tokens",
            Keys::Blocks(..) => "blocks",
        }
    }
}
