//! Loom models of the precise index (`KvIndex`): event application racing matches. Built only
//! under `--cfg router_loom --cfg crossbeam_loom`: run `bash .ci/loom`.
#![cfg(router_loom)]

use cache_aware_router::{KvEvent, KvIndex, KvIndexConfig};
use loom::thread;
use std::collections::BTreeMap;
use std::sync::Arc;

fn overlaps(index: &KvIndex, blocks: &[u64]) -> BTreeMap<usize, usize> {
    let mut out = BTreeMap::new();
    index.overlaps(blocks, |w, n| {
        out.insert(w, n);
    });
    out
}

/// An index of two workers in one shard (4 slots under loom).
fn index() -> Arc<KvIndex> {
    Arc::new(
        KvIndex::with_config(KvIndexConfig {
            max_workers: 2,
            shards: 1,
        })
        .unwrap(),
    )
}

fn stored(blocks: &[u64]) -> KvEvent {
    KvEvent::Stored {
        parent: None,
        blocks: blocks.to_vec(),
    }
}

/// Model 16: a store that rebuilds the table (its 4 slots hold 3 entries, 2 of them dead)
/// racing a match. The match sees worker 0's new chain as absent, half stored or whole, never
/// more; and worker 1's block, which the rebuild copies, is found in every interleaving.
/// The control (`--cfg router_loom_broken_rebuild`: the new table published before it is
/// filled) must fail.
#[test]
fn a_rebuild_racing_a_match_loses_nothing() {
    loom::model(|| {
        let index = index();
        index.apply(1, &stored(&[10, 11, 12])).unwrap();
        index
            .apply(
                1,
                &KvEvent::Removed {
                    blocks: vec![10, 11],
                },
            )
            .unwrap();
        let writer = {
            let index = index.clone();
            thread::spawn(move || index.apply(0, &stored(&[1, 2])).unwrap())
        };
        let seen = overlaps(&index, &[12]);
        assert_eq!(
            seen,
            BTreeMap::from([(1, 1)]),
            "a live block lost in a rebuild"
        );
        let chain = overlaps(&index, &[1, 2]);
        assert!(chain.keys().all(|w| *w == 0) && chain.values().all(|n| *n <= 2));
        writer.join().unwrap();
        assert_eq!(overlaps(&index, &[1, 2]), BTreeMap::from([(0, 2)]));
        assert_eq!(overlaps(&index, &[12]), BTreeMap::from([(1, 1)]));
        assert_eq!(index.stats().live_blocks, 3);
    });
}

/// Model 17: two workers' streams applied at once (one storing, one removing the same shared
/// block) racing a match: each worker's bit changes only by its own events, so at rest worker 0
/// holds the block and worker 1 does not, whatever the order.
#[test]
fn two_writers_on_one_block_keep_their_own_bits() {
    loom::model(|| {
        let index = index();
        index.apply(1, &stored(&[7])).unwrap();
        let a = {
            let index = index.clone();
            thread::spawn(move || index.apply(0, &stored(&[7])).unwrap())
        };
        let b = {
            let index = index.clone();
            thread::spawn(move || {
                index
                    .apply(1, &KvEvent::Removed { blocks: vec![7] })
                    .unwrap()
            })
        };
        let seen = overlaps(&index, &[7]);
        assert!(seen.values().all(|n| *n == 1));
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(overlaps(&index, &[7]), BTreeMap::from([(0, 1)]));
        assert_eq!((index.blocks_held(0), index.blocks_held(1)), (1, 0));
    });
}
