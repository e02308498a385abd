//! The match path allocates nothing: a counting global allocator watches `match_counts` and a
//! cache-hit `match_and_insert` (text already recorded for the chosen tenant).

use cache_aware_router::Tree;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts calls on the current thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

#[test]
fn matching_and_cache_hits_do_not_allocate() {
    let tree = Tree::new();
    let w = tree.tenant_id("w").unwrap();
    let prompt = "system: be brief. ".repeat(200);
    let other = format!("{prompt}question one");
    tree.insert(&other, "w");
    tree.insert(&prompt, "w");
    // Warm up this thread's epoch handle (allocated once per thread on first pin).
    tree.match_counts(&prompt);
    let n = allocations_in(|| {
        for _ in 0..100 {
            assert_eq!(
                tree.match_counts(&other).matched_chars,
                other.chars().count()
            );
            let out = tree.match_and_insert(&other, |_, holders| holders.iter().next());
            assert_eq!(out.tenant, Some(w));
            tree.match_and_insert("zzz unmatched", |_, _| None);
        }
    });
    assert_eq!(n, 0, "the match path allocated {n} times");
    // The check can fail: recording a new text allocates.
    assert!(allocations_in(|| tree.insert("something new", "w")) > 0);
}
