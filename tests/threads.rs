//! No thread is left behind: a test binary of its own, so that no other test's threads are
//! alive while it counts the process's threads (under ThreadSanitizer the multi-threaded policy
//! tests run long enough to overlap its count).

use cache_aware_router::{
    BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy, LoadBalancingPolicy, Worker,
};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_thousand_policies_leave_no_thread_behind() {
    let before = thread_count();
    for _ in 0..1000 {
        let p = CacheAwarePolicy::with_config(CacheAwareConfig {
            eviction_interval_secs: 1,
            ..Default::default()
        });
        let w: Vec<Arc<dyn Worker>> = vec![Arc::new(BasicWorkerBuilder::new("http://w0").build())];
        p.select_worker(&w, Some("x"));
    }
    // The evictor threads are joined when their policies drop; allow the OS a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while thread_count() > before && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(thread_count() <= before, "{} > {before}", thread_count());
}
