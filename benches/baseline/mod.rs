//! The in-repo baseline: a faithful re-creation, in our own code, of the seed's design (the
//! SGLang router's `cache_aware` policy and its `Tree`), so every benchmark can run it beside
//! our engine through one trait. It imports nothing of ours.
//!
//! What it keeps on purpose, because that is what we are measured against:
//! - one `Mutex<HashMap<String, Tree>>` over every model's tree, held for a whole request;
//! - nodes with `DashMap<char, Arc<Node>>` children, `RwLock<String>` text, a
//!   `DashMap<String, u128>` of tenant access times, and a strong parent pointer;
//! - `SystemTime::now()` per operation, per-step `chars().nth()` and suffix copies
//!   (`slice_by_chars`), `chars().count()` of labels on every step;
//! - the miss path's "smallest tree" rule, which sums every tenant's size by walking the whole
//!   tree on each miss;
//! - an eviction thread that holds the global mutex for a whole pass and is never stopped.
#![allow(dead_code)]

use dashmap::DashMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type NodeRef = Arc<Node>;

struct Node {
    children: DashMap<char, NodeRef>,
    text: RwLock<String>,
    tenant_last_access_time: DashMap<String, u128>,
    parent: RwLock<Option<NodeRef>>,
}

pub(crate) struct Tree {
    root: NodeRef,
    tenant_char_count: DashMap<String, usize>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn shared_prefix_count(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

fn slice_by_chars(s: &str, start: usize, end: usize) -> String {
    s.chars().skip(start).take(end - start).collect()
}

impl Tree {
    pub(crate) fn new() -> Self {
        Tree {
            root: Arc::new(Node {
                children: DashMap::new(),
                text: RwLock::new(String::new()),
                tenant_last_access_time: DashMap::new(),
                parent: RwLock::new(None),
            }),
            tenant_char_count: DashMap::new(),
        }
    }

    fn add_count(&self, tenant: &str, n: usize) {
        *self
            .tenant_char_count
            .entry(tenant.to_string())
            .or_insert(0) += n;
    }

    pub(crate) fn insert(&self, text: &str, tenant: &str) {
        let ts = now_ms();
        let mut prev = Arc::clone(&self.root);
        prev.tenant_last_access_time.insert(tenant.to_string(), ts);
        self.tenant_char_count
            .entry(tenant.to_string())
            .or_insert(0);
        let text_count = text.chars().count();
        let mut idx = 0;
        while idx < text_count {
            let first = text.chars().nth(idx).unwrap();
            let curr = prev;
            let rest = slice_by_chars(text, idx, text_count);
            let next = match curr.children.entry(first) {
                dashmap::mapref::entry::Entry::Vacant(v) => {
                    let n = rest.chars().count();
                    let node = Arc::new(Node {
                        children: DashMap::new(),
                        text: RwLock::new(rest),
                        tenant_last_access_time: DashMap::new(),
                        parent: RwLock::new(Some(Arc::clone(&curr))),
                    });
                    self.add_count(tenant, n);
                    node.tenant_last_access_time.insert(tenant.to_string(), ts);
                    v.insert(Arc::clone(&node));
                    idx = text_count;
                    node
                }
                dashmap::mapref::entry::Entry::Occupied(mut o) => {
                    let matched = o.get().clone();
                    let matched_text = matched.text.read().unwrap().to_owned();
                    let matched_count = matched_text.chars().count();
                    let shared = shared_prefix_count(&matched_text, &rest);
                    if shared < matched_count {
                        let upper_text = slice_by_chars(&matched_text, 0, shared);
                        let lower_text = slice_by_chars(&matched_text, shared, matched_count);
                        let upper = Arc::new(Node {
                            children: DashMap::new(),
                            text: RwLock::new(upper_text),
                            tenant_last_access_time: matched.tenant_last_access_time.clone(),
                            parent: RwLock::new(Some(Arc::clone(&curr))),
                        });
                        upper
                            .children
                            .insert(lower_text.chars().next().unwrap(), Arc::clone(&matched));
                        o.insert(Arc::clone(&upper));
                        *matched.text.write().unwrap() = lower_text;
                        *matched.parent.write().unwrap() = Some(Arc::clone(&upper));
                        if !upper.tenant_last_access_time.contains_key(tenant) {
                            self.add_count(tenant, shared);
                        }
                        upper.tenant_last_access_time.insert(tenant.to_string(), ts);
                        idx += shared;
                        upper
                    } else {
                        if !matched.tenant_last_access_time.contains_key(tenant) {
                            self.add_count(tenant, matched_count);
                        }
                        matched
                            .tenant_last_access_time
                            .insert(tenant.to_string(), ts);
                        idx += shared;
                        matched
                    }
                }
            };
            prev = next;
        }
    }

    pub(crate) fn prefix_match(&self, text: &str) -> (String, String) {
        let mut prev = Arc::clone(&self.root);
        let text_count = text.chars().count();
        let mut idx = 0;
        while idx < text_count {
            let first = text.chars().nth(idx).unwrap();
            let rest = slice_by_chars(text, idx, text_count);
            let Some(child) = prev.children.get(&first).map(|c| Arc::clone(&c)) else {
                break;
            };
            let child_text = child.text.read().unwrap().to_owned();
            let shared = shared_prefix_count(&child_text, &rest);
            idx += shared;
            prev = child;
            if shared < child_text.chars().count() {
                break;
            }
        }
        let tenant = prev
            .tenant_last_access_time
            .iter()
            .next()
            .map(|kv| kv.key().to_owned())
            .unwrap_or_else(|| "empty".to_string());
        // Refresh the tenant's time up the path (strong parent pointers).
        let ts = now_ms();
        let mut node = Some(prev);
        while let Some(n) = node {
            n.tenant_last_access_time.insert(tenant.clone(), ts);
            node = n.parent.read().unwrap().clone();
        }
        (slice_by_chars(text, 0, idx), tenant)
    }

    /// Walks the whole tree (the seed's per-miss cost).
    pub(crate) fn get_used_size_per_tenant(&self) -> HashMap<String, usize> {
        let mut sizes = HashMap::new();
        let mut stack = vec![Arc::clone(&self.root)];
        while let Some(n) = stack.pop() {
            let len = n.text.read().unwrap().chars().count();
            for t in n.tenant_last_access_time.iter() {
                *sizes.entry(t.key().clone()).or_insert(0) += len;
            }
            for c in n.children.iter() {
                stack.push(Arc::clone(c.value()));
            }
        }
        sizes
    }

    fn leaves_of(&self) -> HashMap<String, Vec<NodeRef>> {
        let mut out: HashMap<String, Vec<NodeRef>> = HashMap::new();
        let mut stack = vec![Arc::clone(&self.root)];
        while let Some(n) = stack.pop() {
            for t in n.tenant_last_access_time.iter() {
                let held_below = n
                    .children
                    .iter()
                    .any(|c| c.value().tenant_last_access_time.contains_key(t.key()));
                if !held_below {
                    out.entry(t.key().clone()).or_default().push(Arc::clone(&n));
                }
            }
            for c in n.children.iter() {
                stack.push(Arc::clone(c.value()));
            }
        }
        out
    }

    pub(crate) fn evict_tenant_by_size(&self, max_size: usize) {
        let mut pq = BinaryHeap::new();
        let mut nodes: HashMap<usize, NodeRef> = HashMap::new();
        for (tenant, leaves) in self.leaves_of() {
            for n in leaves {
                if let Some(ts) = n.tenant_last_access_time.get(&tenant).map(|t| *t) {
                    let key = Arc::as_ptr(&n) as usize;
                    nodes.insert(key, Arc::clone(&n));
                    pq.push(Reverse((ts, tenant.clone(), key)));
                }
            }
        }
        while let Some(Reverse((_, tenant, key))) = pq.pop() {
            let node = Arc::clone(&nodes[&key]);
            if self
                .tenant_char_count
                .get(&tenant)
                .is_some_and(|c| *c <= max_size)
            {
                continue;
            }
            if node.tenant_last_access_time.remove(&tenant).is_some() {
                let len = node.text.read().unwrap().chars().count();
                if let Some(mut c) = self.tenant_char_count.get_mut(&tenant) {
                    *c = c.saturating_sub(len);
                }
            }
            let parent = node.parent.read().unwrap().clone();
            if let Some(parent) = parent {
                if node.children.is_empty() && node.tenant_last_access_time.is_empty() {
                    let first = node.text.read().unwrap().chars().next();
                    if let Some(first) = first {
                        parent.children.remove(&first);
                    }
                }
                let held_below = parent
                    .children
                    .iter()
                    .any(|c| c.value().tenant_last_access_time.contains_key(&tenant));
                if !held_below {
                    if let Some(ts) = parent.tenant_last_access_time.get(&tenant).map(|t| *t) {
                        let key = Arc::as_ptr(&parent) as usize;
                        nodes.insert(key, Arc::clone(&parent));
                        pq.push(Reverse((ts, tenant, key)));
                    }
                }
            }
        }
    }
}

/// The seed's worker: atomic load and health.
pub(crate) struct BaseWorker {
    pub(crate) url: String,
    pub(crate) load: AtomicUsize,
    pub(crate) healthy: AtomicBool,
}

impl BaseWorker {
    pub(crate) fn new(url: String) -> Self {
        Self {
            url,
            load: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        }
    }
}

pub(crate) struct Config {
    pub(crate) cache_threshold: f32,
    pub(crate) balance_abs_threshold: usize,
    pub(crate) balance_rel_threshold: f32,
    pub(crate) eviction_interval: Option<Duration>,
    pub(crate) max_tree_size: usize,
}

/// The seed's `CacheAwarePolicy::select_worker`, step for step.
pub(crate) struct BaselinePolicy {
    config: Config,
    trees: Arc<Mutex<HashMap<String, Tree>>>,
    /// Never joined: the seed cannot stop its eviction thread.
    _evictor: Option<thread::JoinHandle<()>>,
}

impl BaselinePolicy {
    pub(crate) fn new(config: Config) -> Self {
        let trees = Arc::new(Mutex::new(HashMap::<String, Tree>::new()));
        let evictor = config.eviction_interval.map(|interval| {
            let trees = Arc::clone(&trees);
            let max = config.max_tree_size;
            thread::spawn(move || loop {
                thread::sleep(interval);
                if let Ok(guard) = trees.lock() {
                    for tree in guard.values() {
                        tree.evict_tenant_by_size(max);
                    }
                }
            })
        });
        Self {
            config,
            trees,
            _evictor: evictor,
        }
    }

    pub(crate) fn init_workers(&self, workers: &[Arc<BaseWorker>]) {
        let mut trees = self.trees.lock().unwrap();
        let tree = trees.entry("default".into()).or_insert_with(Tree::new);
        for w in workers {
            tree.insert("", &w.url);
        }
    }

    pub(crate) fn select_worker(&self, workers: &[Arc<BaseWorker>], text: &str) -> Option<usize> {
        let healthy: Vec<usize> = (0..workers.len())
            .filter(|&i| workers[i].healthy.load(Ordering::Relaxed))
            .collect();
        if healthy.is_empty() {
            return None;
        }
        let mut model_workers: HashMap<String, Vec<usize>> = HashMap::new();
        for &i in &healthy {
            model_workers
                .entry("default".to_string())
                .or_default()
                .push(i);
        }
        let loads: Vec<usize> = workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .collect();
        let max = *loads.iter().max().unwrap_or(&0);
        let min = *loads.iter().min().unwrap_or(&0);
        let imbalanced = max.saturating_sub(min) > self.config.balance_abs_threshold
            && (max as f32) > (min as f32 * self.config.balance_rel_threshold);
        let mut trees = self.trees.lock().unwrap();
        if imbalanced {
            let idx = *healthy.iter().min_by_key(|&&i| loads[i])?;
            let tree = trees.entry("default".to_string()).or_insert_with(Tree::new);
            tree.insert(text, &workers[idx].url);
            return Some(idx);
        }
        let mut best: Option<usize> = None;
        let mut best_rate = 0.0f32;
        for (model, idxs) in &model_workers {
            let tree = trees.entry(model.clone()).or_insert_with(Tree::new);
            let (matched, tenant) = tree.prefix_match(text);
            let rate = if text.is_empty() {
                0.0
            } else {
                matched.chars().count() as f32 / text.chars().count() as f32
            };
            if rate > best_rate {
                if let Some(&i) = idxs.iter().find(|&&i| workers[i].url == tenant) {
                    best = Some(i);
                    best_rate = rate;
                }
            }
        }
        let idx = match best {
            Some(i) if best_rate > self.config.cache_threshold => i,
            _ => {
                let mut smallest = String::new();
                let mut smallest_size = usize::MAX;
                for model in model_workers.keys() {
                    let tree = trees.entry(model.clone()).or_insert_with(Tree::new);
                    let size: usize = tree.get_used_size_per_tenant().values().sum();
                    if size < smallest_size {
                        smallest_size = size;
                        smallest = model.clone();
                    }
                }
                model_workers[&smallest]
                    .iter()
                    .copied()
                    .min_by_key(|&i| loads[i])
                    .unwrap_or(healthy[0])
            }
        };
        let tree = trees.entry("default".to_string()).or_insert_with(Tree::new);
        tree.insert(text, &workers[idx].url);
        Some(idx)
    }
}
