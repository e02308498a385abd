//! The seed's own three tests, as written in `shared/seed/cache_aware_seed.rs`, with only their
//! `use` lines changed.

use cache_aware_router::{
    BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy, LoadBalancingPolicy, Worker, WorkerType,
};
use std::sync::Arc;

#[test]
fn test_cache_aware_with_balanced_load() {
    // Create policy without eviction thread for testing
    let config = CacheAwareConfig {
        eviction_interval_secs: 0, // Disable eviction thread
        ..Default::default()
    };
    let policy = CacheAwarePolicy::with_config(config);
    let workers: Vec<Arc<dyn Worker>> = vec![
        Arc::new(
            BasicWorkerBuilder::new("http://w1:8000")
                .worker_type(WorkerType::Regular)
                .api_key("test_api_key")
                .build(),
        ),
        Arc::new(
            BasicWorkerBuilder::new("http://w2:8000")
                .worker_type(WorkerType::Regular)
                .api_key("test_api_key")
                .build(),
        ),
    ];

    // Initialize the policy with workers
    policy.init_workers(&workers);

    // First request should be distributed
    let idx1 = policy.select_worker(&workers, Some("hello world")).unwrap();

    // Same request should go to same worker (cache hit)
    let idx2 = policy.select_worker(&workers, Some("hello world")).unwrap();
    assert_eq!(idx1, idx2);

    // Similar request should also go to same worker
    let idx3 = policy.select_worker(&workers, Some("hello")).unwrap();
    assert_eq!(idx1, idx3);
}

#[test]
fn test_cache_aware_with_imbalanced_load() {
    let policy = CacheAwarePolicy::with_config(CacheAwareConfig {
        cache_threshold: 0.5,
        balance_abs_threshold: 5,
        balance_rel_threshold: 2.0,
        eviction_interval_secs: 0, // Disable eviction thread
        max_tree_size: 10000,
    });

    let worker1 = BasicWorkerBuilder::new("http://w1:8000")
        .worker_type(WorkerType::Regular)
        .build();
    let worker2 = BasicWorkerBuilder::new("http://w2:8000")
        .worker_type(WorkerType::Regular)
        .build();

    // Create significant load imbalance
    for _ in 0..20 {
        worker1.increment_load();
    }
    // worker2 has load 0

    let workers: Vec<Arc<dyn Worker>> = vec![Arc::new(worker1), Arc::new(worker2)];
    policy.init_workers(&workers);

    // Should select worker2 (lower load) despite cache affinity
    for _ in 0..5 {
        let idx = policy.select_worker(&workers, Some("test")).unwrap();
        assert_eq!(idx, 1); // Should always pick worker2
    }
}

#[test]
fn test_cache_aware_worker_removal() {
    let config = CacheAwareConfig {
        eviction_interval_secs: 0, // Disable eviction thread
        ..Default::default()
    };
    let policy = CacheAwarePolicy::with_config(config);
    let workers: Vec<Arc<dyn Worker>> = vec![
        Arc::new(
            BasicWorkerBuilder::new("http://w1:8000")
                .worker_type(WorkerType::Regular)
                .build(),
        ),
        Arc::new(
            BasicWorkerBuilder::new("http://w2:8000")
                .worker_type(WorkerType::Regular)
                .build(),
        ),
    ];

    policy.init_workers(&workers);

    // Route some requests
    policy.select_worker(&workers, Some("test1"));
    policy.select_worker(&workers, Some("test2"));

    // Remove a worker
    policy.remove_worker_by_url("http://w1:8000");
    workers[0].set_healthy(false);

    // All requests should now go to worker2
    let idx = policy.select_worker(&workers, Some("test1")).unwrap();
    assert_eq!(idx, 1);
}
