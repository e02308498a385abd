//! Behaviour of every `Tree` API, single-threaded.

mod common;

use common::assert_accounting;

use cache_aware_router::{ManualClock, Tree, TreeConfig, TreeError};
use std::collections::HashMap;

/// A tree whose ticks move only when the returned clock is told to.
fn tree_with_manual_clock() -> (Tree, ManualClock) {
    let clock = ManualClock::new();
    let tree = Tree::with_config(TreeConfig {
        clock: clock.clone().into(),
        ..TreeConfig::default()
    })
    .unwrap();
    (tree, clock)
}

fn sizes(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn empty_tree_answers() {
    let tree = Tree::new();
    assert_eq!(
        tree.prefix_match("hello"),
        (String::new(), "empty".to_string())
    );
    assert_eq!(tree.prefix_match(""), (String::new(), "empty".to_string()));
    assert_eq!(tree.prefix_match_tenant("hello", "nobody"), "");
    assert_eq!(tree.get_smallest_tenant(), "empty");
    assert!(tree.get_used_size_per_tenant().is_empty());
    assert_eq!(tree.total_units(), 0);
    tree.evict_tenant_by_size(0);
    tree.remove_tenant("nobody");
}

#[test]
fn insert_and_match_basic() {
    let tree = Tree::new();
    tree.insert("hello", "t1");
    tree.insert("apple", "t2");
    assert_eq!(
        tree.prefix_match("hello world"),
        ("hello".into(), "t1".into())
    );
    assert_eq!(tree.prefix_match("apricot").0, "ap");
    assert_eq!(tree.prefix_match("apricot").1, "t2");
    assert_eq!(tree.get_tenant_char_count(), sizes(&[("t1", 5), ("t2", 5)]));
    assert_accounting(&tree);
}

#[test]
fn splits_keep_both_texts_and_exact_counts() {
    let tree = Tree::new();
    tree.insert("hello world", "a");
    tree.insert("hello there", "b");
    tree.insert("help", "a");
    for (text, tenant) in [("hello world", "a"), ("hello there", "b"), ("help", "a")] {
        assert_eq!(tree.prefix_match_tenant(text, tenant), text);
    }
    // a holds "hel" + "lo " + "world" + "p" = 12; b holds "hel" + "lo " + "there" = 11.
    assert_eq!(tree.get_tenant_char_count(), sizes(&[("a", 12), ("b", 11)]));
    assert_eq!(tree.prefix_match_tenant("hello there", "a"), "hello ");
    assert_accounting(&tree);
}

#[test]
fn utf8_splits_never_cut_a_char() {
    let tree = Tree::new();
    tree.insert("你好嗎", "t1");
    tree.insert("你好喔", "t2");
    tree.insert("你心情好嗎", "t3");
    assert_eq!(tree.prefix_match("你好嗎").0, "你好嗎");
    assert_eq!(tree.prefix_match("你好喔").0, "你好喔");
    assert_eq!(tree.prefix_match("你心情好嗎").0, "你心情好嗎");
    assert_eq!(tree.prefix_match("你好呀").0, "你好");
    assert_eq!(tree.prefix_match("你").0, "你");
    assert_eq!(tree.prefix_match_tenant("你好嗎", "t3"), "你");
    assert_eq!(tree.prefix_match_tenant("你心情好嗎", "t1"), "你");
    // Sizes are in chars, not bytes.
    assert_eq!(
        tree.get_tenant_char_count(),
        sizes(&[("t1", 3), ("t2", 3), ("t3", 5)])
    );
    // Mixed widths: é (2 bytes) and ê (2 bytes) share a lead byte.
    tree.insert("café", "t1");
    tree.insert("cafê", "t2");
    assert_eq!(tree.prefix_match("café au lait").0, "café");
    assert_eq!(tree.prefix_match("cafê").0, "cafê");
    assert_eq!(tree.prefix_match("cafë").0, "caf");
    assert_accounting(&tree);
}

#[test]
fn empty_text_registers_a_tenant_with_size_zero() {
    let tree = Tree::new();
    tree.insert("", "w1");
    tree.insert("", "w2");
    assert_eq!(
        tree.get_used_size_per_tenant(),
        sizes(&[("w1", 0), ("w2", 0)])
    );
    assert_eq!(tree.get_smallest_tenant(), "w1");
    // Nothing matched: the earliest present tenant, as the seed's root would give.
    assert_eq!(tree.prefix_match("xyz"), (String::new(), "w1".into()));
    assert_accounting(&tree);
}

#[test]
fn repeated_insert_counts_once() {
    let tree = Tree::new();
    for _ in 0..5 {
        tree.insert("same text", "t");
    }
    tree.insert("same", "t");
    assert_eq!(tree.get_tenant_char_count(), sizes(&[("t", 9)]));
    assert_accounting(&tree);
}

#[test]
fn a_single_one_megabyte_text() {
    let big: String = (0..1 << 20)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let tree = Tree::new();
    tree.insert(&big, "t1");
    assert_eq!(tree.prefix_match(&big).0.len(), big.len());
    let mut other = big.clone();
    other.replace_range(500_000..500_001, "#");
    tree.insert(&other, "t2");
    assert_eq!(tree.prefix_match_tenant(&other, "t2").len(), big.len());
    assert_eq!(tree.prefix_match_tenant(&other, "t1").len(), 500_000);
    assert_eq!(
        tree.tenant_units(tree.lookup_tenant("t1").unwrap()),
        1 << 20
    );
    assert_accounting(&tree);
}

#[test]
fn smallest_tenant_and_unknown_tenants() {
    let tree = Tree::new();
    tree.insert("aaaa", "big");
    tree.insert("b", "small");
    assert_eq!(tree.get_smallest_tenant(), "small");
    assert_eq!(tree.prefix_match_tenant("aaaa", "ghost"), "");
    tree.remove_tenant("ghost");
    assert_eq!(
        tree.get_tenant_char_count(),
        sizes(&[("big", 4), ("small", 1)])
    );
}

#[test]
fn remove_tenant_leaves_others_exact() {
    let tree = Tree::new();
    tree.insert("hello world", "a");
    tree.insert("hello there", "b");
    tree.insert("goodbye", "a");
    tree.remove_tenant("a");
    assert_eq!(tree.get_tenant_char_count(), sizes(&[("b", 11)]));
    assert_eq!(tree.prefix_match("goodbye").0, "");
    assert_eq!(
        tree.prefix_match("hello world"),
        ("hello ".into(), "b".into())
    );
    assert_eq!(tree.prefix_match_tenant("hello there", "b"), "hello there");
    assert_accounting(&tree);
    // Removing twice is a no-op; re-adding works.
    tree.remove_tenant("a");
    tree.insert("goodbye", "a");
    assert_eq!(tree.prefix_match_tenant("goodbye", "a"), "goodbye");
    assert_accounting(&tree);
}

#[test]
fn eviction_keeps_each_tenant_within_its_limit_lru_first() {
    let (tree, clock) = tree_with_manual_clock();
    let texts = ["alpha-one", "bravo-two", "charlie-three", "delta-four"];
    for t in texts {
        clock.advance(1);
        tree.insert(t, "a");
        clock.advance(1);
        tree.insert(t, "b");
    }
    // Touch "alpha" for b so it becomes b's most recent.
    clock.advance(1);
    assert_eq!(tree.prefix_match_tenant("alpha-one", "b"), "alpha-one");
    tree.evict_tenant_by_size(20);
    let counts = tree.get_tenant_char_count();
    assert!(counts.values().all(|&n| n <= 20), "{counts:?}");
    // LRU: a keeps its two newest texts, b keeps alpha (touched) and delta.
    assert_eq!(tree.prefix_match_tenant("delta-four", "a"), "delta-four");
    assert_eq!(tree.prefix_match_tenant("charlie-three", "a"), "");
    assert_eq!(tree.prefix_match_tenant("alpha-one", "b"), "alpha-one");
    assert_eq!(tree.prefix_match_tenant("bravo-two", "b"), "");
    assert_accounting(&tree);
    tree.evict_tenant_by_size(0);
    assert_eq!(tree.total_units(), 0);
    assert_eq!(tree.prefix_match("alpha-one").0, "");
    assert_accounting(&tree);
}

#[test]
fn evict_to_total_removes_the_oldest_leaves_across_tenants_first() {
    let (tree, clock) = tree_with_manual_clock();
    // a: "shared-x" at tick 1, then "shared-y" at tick 2 (the two share the node "shared-").
    // b: "other" at tick 3.
    clock.set(1);
    tree.insert("shared-x", "a");
    clock.set(2);
    tree.insert("shared-y", "a");
    clock.set(3);
    tree.insert("other", "b");
    assert_eq!(tree.total_units(), 8 + 1 + 5);
    // 13 fits once the oldest leaf ("x", tick 1) goes.
    let stats = tree.evict_to_total(13);
    assert_eq!((stats.detached, stats.units_freed), (1, 1));
    assert_eq!(tree.prefix_match_tenant("shared-x", "a"), "shared-");
    assert_eq!(tree.prefix_match_tenant("shared-y", "a"), "shared-y");
    // 5: "y" (tick 2) goes, then "shared-" is a leaf of a at tick 2, older than b's "other".
    let stats = tree.evict_to_total(5);
    assert_eq!(stats.units_freed, 1 + 7);
    assert_eq!(tree.prefix_match_tenant("shared-y", "a"), "");
    assert_eq!(tree.prefix_match_tenant("other", "b"), "other");
    assert_eq!(tree.total_units(), 5);
    assert_accounting(&tree);
    assert_eq!(tree.evict_to_total(0).nodes_removed, 1);
    assert_eq!(tree.total_units(), 0);
    assert_accounting(&tree);
}

#[test]
fn native_api_matches_then_inserts_in_one_call() {
    let tree = Tree::new();
    let w1 = tree.tenant_id("w1").unwrap();
    let w2 = tree.tenant_id("w2").unwrap();
    tree.insert_for("the quick brown fox", w1).unwrap();
    let out = tree.match_and_insert("the quick red fox", |counts, holders| {
        assert_eq!(counts.matched, 10);
        assert_eq!(counts.total, 17);
        assert_eq!(holders.iter().collect::<Vec<_>>(), vec![w1]);
        Some(w2)
    });
    assert_eq!(out.tenant, Some(w2));
    assert_eq!(
        tree.prefix_match_tenant("the quick red fox", "w2"),
        "the quick red fox"
    );
    assert_eq!(tree.tenant_units(w2), 17);
    assert_eq!(tree.match_counts("the quick red fox").matched, 17);
    // Choosing nobody records nothing.
    let out = tree.match_and_insert("zzz", |_, holders| {
        assert!(holders.is_empty());
        None
    });
    assert_eq!(
        (out.tenant, out.counts.matched, out.counts.total),
        (None, 0, 3)
    );
    assert_eq!(tree.match_counts("zzz").matched, 0);
    assert_accounting(&tree);
}

#[test]
fn ids_from_another_tree_are_refused() {
    let tree = Tree::new();
    let other = Tree::new();
    for i in 0..3 {
        other.tenant_id(&format!("o{i}")).unwrap();
    }
    let foreign = other.lookup_tenant("o2").unwrap();
    assert_eq!(
        tree.insert_for("x", foreign),
        Err(TreeError::UnknownTenant(2))
    );
    assert!(tree.remove_tenant_id(foreign).is_err());
    let out = tree.match_and_insert("x", |_, _| Some(foreign));
    assert_eq!(out.tenant, None);
    assert_eq!(tree.total_units(), 0);
}

#[test]
fn invalid_shard_counts_are_errors() {
    for shards in [0, 3, 8192] {
        let err = Tree::with_config(TreeConfig {
            shards,
            ..TreeConfig::default()
        })
        .unwrap_err();
        assert_eq!(err, TreeError::InvalidShards(shards));
        assert!(err.to_string().contains("power of two"));
    }
    let one = Tree::with_config(TreeConfig {
        shards: 1,
        ..TreeConfig::default()
    })
    .unwrap();
    one.insert("abc", "t");
    one.insert("xyz", "t");
    assert_eq!(one.prefix_match("xyz").0, "xyz");
}

#[test]
fn many_tenants_on_one_node_grow_its_slots() {
    let tree = Tree::new();
    for i in 0..100 {
        tree.insert("shared prefix", &format!("t{i}"));
    }
    for i in (0..100).step_by(2) {
        tree.remove_tenant(&format!("t{i}"));
    }
    for i in 100..150 {
        tree.insert("shared prefix", &format!("t{i}"));
    }
    let counts = tree.get_tenant_char_count();
    assert_eq!(counts.len(), 100);
    assert!(counts.values().all(|&n| n == 13));
    assert_accounting(&tree);
}
