//! A deliberately plain, sequential radix tree with the seed's semantics: `String` labels,
//! `BTreeMap` children keyed by first char, a tenant → tick map per node.

use std::collections::{BTreeMap, HashMap};

struct RNode {
    label: Vec<char>,
    children: BTreeMap<char, usize>,
    tenants: BTreeMap<String, u64>,
    parent: Option<usize>,
    alive: bool,
}

pub(crate) struct Reference {
    nodes: Vec<RNode>,
    counts: HashMap<String, usize>,
    order: Vec<String>,
    live: Vec<String>,
}

pub(crate) struct RMatch {
    pub(crate) matched: String,
    /// Tenants of the deepest matched node; `None` if nothing matched.
    pub(crate) holders: Option<Vec<String>>,
    path: Vec<usize>,
}

impl Reference {
    pub(crate) fn new() -> Self {
        Reference {
            nodes: vec![RNode {
                label: vec![],
                children: BTreeMap::new(),
                tenants: BTreeMap::new(),
                parent: None,
                alive: true,
            }],
            counts: HashMap::new(),
            order: vec![],
            live: vec![],
        }
    }

    fn register(&mut self, tenant: &str) {
        if !self.order.iter().any(|t| t == tenant) {
            self.order.push(tenant.to_string());
        }
        if !self.live.iter().any(|t| t == tenant) {
            self.live.push(tenant.to_string());
            self.counts.entry(tenant.to_string()).or_insert(0);
        }
    }

    fn new_node(&mut self, label: Vec<char>, parent: usize) -> usize {
        self.nodes.push(RNode {
            label,
            children: BTreeMap::new(),
            tenants: BTreeMap::new(),
            parent: Some(parent),
            alive: true,
        });
        self.nodes.len() - 1
    }

    fn attach(&mut self, n: usize, tenant: &str, tick: u64) {
        let len = self.nodes[n].label.len();
        if self.nodes[n]
            .tenants
            .insert(tenant.to_string(), tick)
            .is_none()
        {
            *self.counts.get_mut(tenant).unwrap() += len;
        }
    }

    pub(crate) fn insert(&mut self, text: &str, tenant: &str, tick: u64) {
        self.register(tenant);
        let text: Vec<char> = text.chars().collect();
        let mut node = 0;
        let mut pos = 0;
        while pos < text.len() {
            match self.nodes[node].children.get(&text[pos]).copied() {
                None => {
                    let leaf = self.new_node(text[pos..].to_vec(), node);
                    self.nodes[node].children.insert(text[pos], leaf);
                    self.attach(leaf, tenant, tick);
                    return;
                }
                Some(child) => {
                    let label = &self.nodes[child].label;
                    let k = label
                        .iter()
                        .zip(&text[pos..])
                        .take_while(|(a, b)| a == b)
                        .count();
                    if k < label.len() {
                        // Split: a new upper node takes the first k chars and the tenants.
                        let upper_label = label[..k].to_vec();
                        let lower_label = label[k..].to_vec();
                        let upper = self.new_node(upper_label, node);
                        self.nodes[upper].tenants = self.nodes[child].tenants.clone();
                        self.nodes[upper].children.insert(lower_label[0], child);
                        self.nodes[child].label = lower_label;
                        self.nodes[child].parent = Some(upper);
                        self.nodes[node].children.insert(text[pos], upper);
                        continue;
                    }
                    self.attach(child, tenant, tick);
                    node = child;
                    pos += k;
                }
            }
        }
    }

    fn descend(&self, text: &str, only: Option<&str>) -> (usize, Vec<usize>) {
        let text: Vec<char> = text.chars().collect();
        let (mut node, mut pos, mut path) = (0, 0, vec![]);
        while pos < text.len() {
            let Some(&child) = self.nodes[node].children.get(&text[pos]) else {
                break;
            };
            if let Some(t) = only {
                if !self.nodes[child].tenants.contains_key(t) {
                    break;
                }
            }
            let label = &self.nodes[child].label;
            let k = label
                .iter()
                .zip(&text[pos..])
                .take_while(|(a, b)| a == b)
                .count();
            pos += k;
            path.push(child);
            if k < label.len() {
                break;
            }
            node = child;
        }
        (pos, path)
    }

    pub(crate) fn prefix_match(&self, text: &str) -> RMatch {
        let (chars, path) = self.descend(text, None);
        RMatch {
            matched: text.chars().take(chars).collect(),
            holders: path
                .last()
                .map(|&n| self.nodes[n].tenants.keys().cloned().collect()),
            path,
        }
    }

    /// The seed's answer when nothing matched: the earliest-registered present tenant.
    pub(crate) fn fallback_tenant(&self) -> String {
        self.order
            .iter()
            .find(|t| self.live.contains(t))
            .cloned()
            .unwrap_or_else(|| "empty".into())
    }

    pub(crate) fn refresh(&mut self, m: &RMatch, tenant: &str, tick: u64) {
        for &n in &m.path {
            if let Some(t) = self.nodes[n].tenants.get_mut(tenant) {
                *t = tick;
            }
        }
    }

    pub(crate) fn prefix_match_tenant(&mut self, text: &str, tenant: &str, tick: u64) -> String {
        let (chars, path) = self.descend(text, Some(tenant));
        for n in path {
            *self.nodes[n].tenants.get_mut(tenant).unwrap() = tick;
        }
        text.chars().take(chars).collect()
    }

    fn unlink_if_empty(&mut self, n: usize) {
        if n != 0 && self.nodes[n].children.is_empty() && self.nodes[n].tenants.is_empty() {
            let parent = self.nodes[n].parent.unwrap();
            let first = self.nodes[n].label[0];
            self.nodes[parent].children.remove(&first);
            self.nodes[n].alive = false;
        }
    }

    pub(crate) fn remove_tenant(&mut self, tenant: &str) {
        if !self.order.iter().any(|t| t == tenant) {
            return;
        }
        // Children before parents: walk in reverse pre-order.
        for n in self.preorder().into_iter().rev() {
            if self.nodes[n].tenants.remove(tenant).is_some() {
                *self.counts.get_mut(tenant).unwrap() -= self.nodes[n].label.len();
            }
            self.unlink_if_empty(n);
        }
        self.live.retain(|t| t != tenant);
        self.counts.remove(tenant);
    }

    fn preorder(&self) -> Vec<usize> {
        let mut out = vec![];
        let mut stack: Vec<usize> = self.nodes[0].children.values().rev().copied().collect();
        while let Some(n) = stack.pop() {
            out.push(n);
            stack.extend(self.nodes[n].children.values().rev());
        }
        out
    }

    pub(crate) fn evict(&mut self, max: usize) {
        let over: Vec<String> = self
            .order
            .iter()
            .filter(|t| self.counts.get(*t).is_some_and(|&c| c > max))
            .cloned()
            .collect();
        for tenant in over {
            let mut heap: Vec<(u64, usize)> = self
                .preorder()
                .into_iter()
                .filter(|&n| {
                    self.nodes[n].tenants.contains_key(&tenant)
                        && !self.nodes[n]
                            .children
                            .values()
                            .any(|&c| self.nodes[c].tenants.contains_key(&tenant))
                })
                .map(|n| (self.nodes[n].tenants[&tenant], n))
                .collect();
            while self.counts[&tenant] > max {
                heap.sort_by(|a, b| b.cmp(a));
                let Some((_, n)) = heap.pop() else { break };
                self.nodes[n].tenants.remove(&tenant);
                *self.counts.get_mut(&tenant).unwrap() -= self.nodes[n].label.len();
                self.unlink_if_empty(n);
                let p = self.nodes[n].parent.unwrap();
                if p != 0
                    && self.nodes[p].tenants.contains_key(&tenant)
                    && !self.nodes[p]
                        .children
                        .values()
                        .any(|&c| self.nodes[c].tenants.contains_key(&tenant))
                {
                    heap.push((self.nodes[p].tenants[&tenant], p));
                }
            }
        }
    }

    pub(crate) fn counts(&self) -> HashMap<String, usize> {
        self.counts.clone()
    }

    pub(crate) fn smallest(&self) -> String {
        self.order
            .iter()
            .filter(|t| self.live.contains(t))
            .min_by_key(|t| self.counts[*t])
            .cloned()
            .unwrap_or_else(|| "empty".into())
    }

    pub(crate) fn node_count(&self) -> usize {
        self.preorder().len()
    }
}
