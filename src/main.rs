//! The main job, for now a short demonstration: two threads route a shared-prefix workload
//! through the cache-aware policy and print what it decided. (The trace-replaying simulator
//! replaces it.)

use cache_aware_router::{BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let policy = CacheAwarePolicy::try_with_config(CacheAwareConfig::default())?;
    for i in 0..4 {
        let url = format!("http://worker-{i}:8000");
        policy.register_worker(Arc::new(BasicWorkerBuilder::new(url).build()))?;
    }
    let prompts: Vec<String> = (0..8)
        .flat_map(|group| {
            let system = format!("system prompt {group}: ").repeat(40);
            (0..32).map(move |q| format!("{system}question {q}?"))
        })
        .collect();
    let start = Instant::now();
    thread::scope(|s| {
        for t in 0..2 {
            let (policy, prompts) = (&policy, &prompts);
            s.spawn(move || {
                for p in prompts.iter().skip(t).step_by(2) {
                    let _ticket = policy.route("", p).expect("healthy workers");
                }
            });
        }
    });
    let elapsed = start.elapsed();
    println!(
        "routed {} prompts on 2 threads in {:.2?} ({:.0} ns per decision)",
        prompts.len(),
        elapsed,
        elapsed.as_nanos() as f64 / prompts.len() as f64
    );
    let m = policy.metrics();
    println!(
        "cache hits {}, misses {}, load-balancing events {}",
        m.cache_hits, m.cache_misses, m.load_balancing_events
    );
    for w in &m.workers {
        println!(
            "{:>24}: {:>3} routed, {:>6} chars cached",
            w.url, w.routed, w.cached_chars
        );
    }
    Ok(())
}
