//! vLLM's KV event wire format: fixtures encoded by the real encoder (msgspec, with the struct
//! definitions of three release families: `tests/fixtures/vllm/generate.py`), and malformed
//! frames: truncated at every byte, corrupted, huge lengths, deep nesting, unknown tags.

use cache_aware_router::vllm::{decode_batch, decode_sequence, WireError, END_OF_REPLAY};
use cache_aware_router::KvEvent;
use std::path::Path;

fn fixtures() -> Vec<(String, Vec<u8>, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vllm");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut out = vec![];
    for (name, exp) in expected.as_object().unwrap() {
        let payload = std::fs::read(dir.join(format!("{name}.msgpack"))).unwrap();
        out.push((name.clone(), payload, exp.clone()));
    }
    assert_eq!(out.len(), 4, "every fixture present");
    out
}

fn key(v: &serde_json::Value) -> u64 {
    v.as_str().unwrap().parse().unwrap()
}

#[test]
fn fixtures_from_the_real_encoder_decode_to_what_they_hold() {
    for (name, payload, exp) in fixtures() {
        let batch = decode_batch(&payload).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(batch.ts, exp["ts"].as_f64().unwrap(), "{name}");
        assert_eq!(
            batch.data_parallel_rank,
            exp["data_parallel_rank"].as_i64(),
            "{name}"
        );
        assert_eq!(batch.skipped, 0, "{name}");
        let events = exp["events"].as_array().unwrap();
        assert_eq!(batch.events.len(), events.len(), "{name}");
        for (got, want) in batch.events.iter().zip(events) {
            let blocks =
                || -> Vec<u64> { want["blocks"].as_array().unwrap().iter().map(key).collect() };
            let expected = match want["kind"].as_str().unwrap() {
                "BlockStored" => KvEvent::Stored {
                    parent: (!want["parent"].is_null()).then(|| key(&want["parent"])),
                    blocks: blocks(),
                },
                "BlockRemoved" => KvEvent::Removed { blocks: blocks() },
                "AllBlocksCleared" => KvEvent::Cleared,
                other => panic!("{other}"),
            };
            assert_eq!(got.event, expected, "{name}");
            assert_eq!(got.medium.as_deref(), want["medium"].as_str(), "{name}");
        }
    }
}

#[test]
fn every_truncation_and_corruption_is_an_error_not_a_panic() {
    for (name, payload, _) in fixtures() {
        for cut in 0..payload.len() {
            assert!(
                decode_batch(&payload[..cut]).is_err(),
                "{name} cut at {cut} decoded"
            );
        }
        // Every byte replaced by a few values: decodes or errs, never panics; and the bytes
        // after a whole batch are an error.
        for at in 0..payload.len() {
            for b in [0x00, 0xc1, 0xdd, 0xdf, 0xff, payload[at] ^ 0x01] {
                let mut bad = payload.clone();
                bad[at] = b;
                let _ = decode_batch(&bad);
            }
        }
        let mut longer = payload.clone();
        longer.push(0xc0);
        assert_eq!(decode_batch(&longer), Err(WireError::TrailingBytes(1)));
    }
}

/// A batch `[ts, [event], ...]` around one raw msgpack event.
fn batch_of(event: &[u8]) -> Vec<u8> {
    let mut b = vec![0x92, 0xcb];
    b.extend(1.5f64.to_be_bytes());
    b.push(0x91);
    b.extend(event);
    b
}

#[test]
fn huge_lengths_and_deep_nesting_are_refused_before_allocating() {
    // An events array claiming 2^32 - 1 entries in a 16-byte frame.
    let mut b = vec![0x92, 0xcb];
    b.extend(1.0f64.to_be_bytes());
    b.extend([0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]);
    assert!(matches!(
        decode_batch(&b),
        Err(WireError::LengthPastEnd {
            claimed: 4_294_967_295,
            ..
        })
    ));
    // A block hash claiming a 4 GiB byte string.
    let mut e = vec![0x93, 0xac];
    e.extend(b"BlockRemoved");
    e.extend([0x91, 0xc6, 0xff, 0xff, 0xff, 0xf0, 0x00]);
    assert!(matches!(
        decode_batch(&batch_of(&e)),
        Err(WireError::LengthPastEnd { .. })
    ));
    // An unknown field of a map event nested 100 deep.
    let mut e = vec![0x82, 0xa4];
    e.extend(b"type");
    e.push(0xb0);
    e.extend(b"AllBlocksCleared");
    e.extend([0xa1, b'x']);
    e.extend(std::iter::repeat_n(0x91, 100));
    e.push(0xc0);
    assert_eq!(decode_batch(&batch_of(&e)), Err(WireError::TooDeep));
}

#[test]
fn unknown_event_kinds_are_skipped_and_the_rest_applies() {
    // [ts, [["BlockUpdated", 1], ["AllBlocksCleared"]]]
    let mut b = vec![0x92, 0xcb];
    b.extend(2.0f64.to_be_bytes());
    b.push(0x92);
    b.extend([0x92, 0xac]);
    b.extend(b"BlockUpdated");
    b.push(0x01);
    b.extend([0x91, 0xb0]);
    b.extend(b"AllBlocksCleared");
    let batch = decode_batch(&b).unwrap();
    assert_eq!(batch.skipped, 1);
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].event, KvEvent::Cleared);
    // A known kind missing its hashes, or a hash of the wrong type, fails the frame.
    let mut e = vec![0x91, 0xac];
    e.extend(b"BlockRemoved");
    assert!(decode_batch(&batch_of(&e)).is_err());
    let mut e = vec![0x92, 0xac];
    e.extend(b"BlockRemoved");
    e.extend([0x91, 0xa1, b'x']);
    let err = decode_batch(&batch_of(&e)).unwrap_err();
    assert!(err.to_string().contains("block_hashes"), "{err}");
}

#[test]
fn sequence_frames_are_eight_big_endian_bytes() {
    assert_eq!(decode_sequence(&7u64.to_be_bytes()), Ok(7));
    assert_eq!(decode_sequence(&[0xff; 8]), Ok(END_OF_REPLAY));
    assert_eq!(decode_sequence(&[0; 7]), Err(WireError::BadSequence(7)));
}

/// vLLM's `sha256_cbor` block hashes, as `tests/fixtures/vllm/block_hashes.py` computes them
/// with cbor2 and hashlib: the router's chain equals the engine's, block for block.
#[test]
fn request_block_hashes_match_vllm_sha256_cbor() {
    use cache_aware_router::{BlockHasher, VllmSha256Cbor};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vllm/block_hashes.json");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for case in cases {
        let hasher = VllmSha256Cbor::new(
            case["block_size"].as_u64().unwrap() as usize,
            case["seed"].as_str().unwrap(),
        );
        let tokens: Vec<u32> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<u64> = case["keys"].as_array().unwrap().iter().map(key).collect();
        assert_eq!(hasher.block_keys(&tokens), want, "{}", case["name"]);
        // The key is the digest's fold, so an event carrying the digest matches.
        for (digest, k) in case["digests"].as_array().unwrap().iter().zip(&want) {
            let bytes: Vec<u8> = (0..32)
                .map(|i| {
                    u8::from_str_radix(&digest.as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap()
                })
                .collect();
            assert_eq!(cache_aware_router::fold_hash(&bytes), *k);
        }
    }
}
