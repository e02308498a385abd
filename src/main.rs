//! The main job, for now a short demonstration: a few threads route a shared-prefix workload
//! through one tree and print what the tree learned. (The trace-replaying simulator replaces it.)

use cache_aware_router::Tree;
use std::thread;
use std::time::Instant;

fn main() {
    let tree = Tree::new();
    let workers: Vec<_> = (0..4)
        .map(|i| {
            tree.tenant_id(&format!("http://worker-{i}:8000"))
                .expect("4 tenants fit")
        })
        .collect();
    let prompts: Vec<String> = (0..8)
        .flat_map(|group| {
            let system = format!("system prompt {group}: ").repeat(40);
            (0..32).map(move |q| format!("{system}question {q}?"))
        })
        .collect();
    let start = Instant::now();
    thread::scope(|s| {
        for t in 0..2 {
            let (tree, workers, prompts) = (&tree, &workers, &prompts);
            s.spawn(move || {
                for (i, p) in prompts.iter().enumerate().skip(t).step_by(2) {
                    // Follow the cache when most of the prompt matched; otherwise spread.
                    tree.match_and_insert(p, |counts, holders| {
                        holders
                            .iter()
                            .next()
                            .filter(|_| counts.ratio() > 0.5)
                            .or(Some(workers[i % workers.len()]))
                    });
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
    let mut sizes: Vec<_> = tree.get_tenant_char_count().into_iter().collect();
    sizes.sort();
    for (worker, chars) in sizes {
        println!("{worker:>24}: {chars:>7} chars cached");
    }
    println!("tree total: {} chars", tree.total_chars());
}
