//! Traces in the Mooncake format, a built-in generator of the same shape, and the text a
//! router sees for a request.

use serde::Deserialize;
use std::fmt;
use std::path::Path;

/// Tokens in one prefix block of the Mooncake format.
pub const TOKENS_PER_BLOCK: u64 = 512;

/// One request of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Request {
    /// Arrival, in ms from the start of the trace.
    pub timestamp: u64,
    /// Prompt tokens.
    pub input_length: u64,
    /// Generated tokens.
    pub output_length: u64,
    /// Ids of the prompt's 512-token prefix blocks (prefix-chained: equal ids, equal prefix).
    pub hash_ids: Vec<u64>,
}

/// A trace line that could not be used.
#[derive(Debug, PartialEq, Eq)]
pub struct TraceError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trace line {}: {}", self.line, self.message)
    }
}

/// Parses a JSONL trace; the first bad line is an error naming it. Requests are sorted by
/// arrival (stable, so equal timestamps keep file order).
pub fn parse(text: &str) -> Result<Vec<Request>, TraceError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = serde_json::from_str(line).map_err(|e| TraceError {
            line: i + 1,
            message: format!("not a trace record ({e}); expected {{\"timestamp\", \"input_length\", \"output_length\", \"hash_ids\"}}"),
        })?;
        if req.hash_ids.is_empty() && req.input_length > 0 {
            return Err(TraceError {
                line: i + 1,
                message: "hash_ids is empty but input_length is not".into(),
            });
        }
        out.push(req);
    }
    if out.is_empty() {
        return Err(TraceError {
            line: 0,
            message: "the trace holds no request".into(),
        });
    }
    out.sort_by_key(|r| r.timestamp);
    Ok(out)
}

pub fn load(path: &Path) -> Result<Vec<Request>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read trace {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// xorshift64*, seeded: the generator and the text blocks are reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A built-in trace of the Mooncake shape: multi-turn conversations that extend earlier
/// prompts, groups sharing long system prompts, and one-off requests; Poisson-like arrivals.
pub fn generate(requests: usize, seed: u64) -> Vec<Request> {
    let mut rng = Rng::new(seed);
    let mut next_id = 0u64;
    let mut fresh = |k: u64| -> Vec<u64> {
        let ids = (next_id..next_id + k).collect();
        next_id += k;
        ids
    };
    let systems: Vec<Vec<u64>> = (0..24).map(|_| fresh(8 + (seed % 3) * 4)).collect();
    let mut sessions: Vec<Vec<u64>> = Vec::new();
    let mut t = 0u64;
    let mut out = Vec::with_capacity(requests);
    for _ in 0..requests {
        t += rng.below(500);
        let kind = rng.below(10);
        let hash_ids = if kind < 4 && !sessions.is_empty() {
            let i = rng.below(sessions.len() as u64) as usize;
            let extra = fresh(1 + rng.below(4));
            sessions[i].extend(extra);
            sessions[i].clone()
        } else if kind < 8 {
            let mut ids = systems[rng.below(systems.len() as u64) as usize].clone();
            ids.extend(fresh(1 + rng.below(16)));
            sessions.push(ids.clone());
            if sessions.len() > 400 {
                sessions.remove(0);
            }
            ids
        } else {
            fresh(2 + rng.below(40))
        };
        let input_length = hash_ids.len() as u64 * TOKENS_PER_BLOCK - rng.below(TOKENS_PER_BLOCK);
        out.push(Request {
            timestamp: t,
            input_length,
            output_length: 1 + rng.below(300),
            hash_ids,
        });
    }
    out
}

/// The text a router sees: each block id becomes a fixed pseudo-random block of
/// `chars_per_block` chars, so equal prefixes of ids are equal prefixes of text.
pub fn text_of(req: &Request, chars_per_block: usize) -> String {
    let mut s = String::with_capacity(req.hash_ids.len() * chars_per_block);
    for id in &req.hash_ids {
        let mut rng = Rng::new(id.wrapping_add(0x5EED));
        let start = s.len();
        while s.len() - start < chars_per_block {
            let r = rng.next();
            s.push(if r.is_multiple_of(6) {
                ' '
            } else {
                char::from(b'a' + (r >> 8) as u8 % 26)
            });
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_lines_and_names_the_bad_one() {
        let good = r#"{"timestamp": 5, "input_length": 600, "output_length": 3, "hash_ids": [1, 2]}
{"timestamp": 0, "input_length": 100, "output_length": 1, "hash_ids": [1]}
"#;
        let reqs = parse(good).unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].timestamp, 0, "sorted by arrival");
        assert_eq!(reqs[1].hash_ids, vec![1, 2]);
        let bad = format!("{good}{{\"timestamp\": \"soon\"}}\n");
        let err = parse(&bad).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.to_string().starts_with("trace line 3:"));
        let missing = r#"{"timestamp": 1, "input_length": 10, "output_length": 1}"#;
        assert_eq!(parse(missing).unwrap_err().line, 1);
        let empty_ids =
            r#"{"timestamp": 1, "input_length": 10, "output_length": 1, "hash_ids": []}"#;
        assert!(parse(empty_ids).unwrap_err().message.contains("hash_ids"));
        assert_eq!(parse("\n\n").unwrap_err().line, 0);
    }

    #[test]
    fn the_shared_trace_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/traces/mooncake_synthetic_trace.jsonl");
        if let Ok(reqs) = load(&path) {
            assert_eq!(reqs.len(), 3993);
        }
    }

    #[test]
    fn generator_is_seeded_and_shares_prefixes() {
        assert_eq!(generate(300, 7), generate(300, 7));
        assert_ne!(generate(300, 7), generate(300, 8));
        let reqs = generate(500, 1);
        let texts: Vec<String> = reqs.iter().take(50).map(|r| text_of(r, 32)).collect();
        let shared = texts
            .iter()
            .enumerate()
            .any(|(i, a)| texts[..i].iter().any(|b| a[..32] == b[..32]));
        assert!(shared, "some requests share a first block");
    }
}
