//! Tunables, each with the reason for its value.

/// Default number of shards (independent sub-roots) per tree. Texts are sent to a shard by their
/// first char, so requests with different first chars never touch the same root array; 32 roots
/// cost about 3 KiB per tree and leave collisions rare for the few dozen distinct first chars
/// real prompts start with.
pub(crate) const DEFAULT_SHARDS: usize = 32;

/// Upper bound on shards: beyond this the roots' memory outgrows any contention they could save.
pub(crate) const MAX_SHARDS: usize = 4096;

/// Distinct tenants one tree can intern. A tenant id must fit the 15-bit field of a tenant slot
/// (see `tree/tenants.rs`); 16,384 is far above any fleet a router fronts.
#[cfg(not(router_loom))]
pub(crate) const MAX_TENANTS: usize = 1 << 14;
/// Under loom every atomic is a modelled object: keep the registry tiny.
#[cfg(router_loom)]
pub(crate) const MAX_TENANTS: usize = 16;

/// Tenants per lazily allocated registry chunk: a tree that serves 8 workers allocates one
/// chunk of 64 entries, not the whole 16,384.
#[cfg(not(router_loom))]
pub(crate) const TENANT_CHUNK: usize = 64;
#[cfg(router_loom)]
pub(crate) const TENANT_CHUNK: usize = 8;

/// Tenant slots a new node gets beyond the tenants it starts with. A leaf is usually created for
/// one tenant; one spare slot lets a second tenant join without rebuilding the node.
pub(crate) const MIN_TENANT_SLOTS: usize = 2;

/// Tenant slots kept inside the node itself; nodes that need more get a heap array instead.
/// Three is a fresh leaf's capacity (`1 + MIN_TENANT_SLOTS`): of the slot arrays a cold
/// Mooncake replay builds, 96% fit (94% with 64 workers), and a node with three inline slots is
/// 104 bytes, less than the 80-byte node plus separate 24-byte array it replaces once glibc's
/// chunk headers are counted (112 vs 96 + 32).
pub(crate) const INLINE_SLOTS: usize = 3;

/// Steps of a descent remembered on the stack so the insert that follows a match can skip the
/// byte comparisons. Deeper paths still work; the steps past this are compared again.
/// 64 steps of 16 bytes is 1 KiB of stack; Mooncake-shaped prompts branch far less often.
pub(crate) const PATH_CAPACITY: usize = 64;

/// Child arrays up to this length are scanned linearly; longer ones are binary-searched.
pub(crate) const LINEAR_CHILD_SCAN: usize = 8;

/// Walks the seed's per-tenant eviction (`Tree::evict_tenants_over`) makes when concurrent
/// splits keep it from reaching the limit in one (a node it picked was replaced under it).
pub(crate) const EVICTION_PASSES: usize = 4;

/// A tree over its budget is trimmed to `budget - budget / EVICTION_HEADROOM_DIVISOR`, by the
/// request whose insert took it over. Eviction costs what it evicts (`tree/evict.rs`), so the
/// headroom only sets how often a request pays for a batch, and how large one is: 1/64 is 46 K
/// chars on the churn bench's budget, about 11 nodes of Mooncake prompts per eviction; 1/256
/// measured the same within the noise (BENCHMARKS.md section 4).
pub(crate) const EVICTION_HEADROOM_DIVISOR: usize = 64;

/// Children of one node that eviction keys when it opens the node (`tree/evict.rs`): all of
/// them up to this many (exact LRU), a window of this many from a random offset past it
/// (sampled LRU, as Redis samples keys). Keying a child reads one cache line.
pub(crate) const EVICT_FANOUT: usize = 16;

/// The estimated-TTFT rule sends a request to the holder of its longest match (past the cache
/// threshold) while that worker's estimate is at most this many times the lowest: one
/// request's estimate does not see the requests that will follow on the same prefix. In the
/// simulator (batching workers, both traces, 1x to 4x the traces' rate, 25 us a prefill
/// token), 1x kept mean TTFT within 1.05x of the oracle's but lost 3-3.6 points of hit rate to
/// the seed rule at 4x; 2x keeps the hit rate within 1.2 points and mean TTFT within 1.02x;
/// 1.5x was between.
pub(crate) const TTFT_EXPLOIT_FACTOR: f64 = 2.0;

/// Cells of a striped counter (the policy's counters, each worker's processed count). Threads
/// pick a cell by a hash of their id, so two routing threads share one with probability 1/8;
/// a cell is 128 bytes, so a counter is 1 KiB.
#[cfg(not(router_loom))]
pub(crate) const STRIPES: usize = 8;
/// Under loom every cell is a modelled atomic (and every worker has a counter): keep them few.
#[cfg(router_loom)]
pub(crate) const STRIPES: usize = 2;

/// Workers `select_worker` resolves into a stack array (8 bytes each, 512 bytes, zeroed per
/// request): fleets up to this size route without allocating; larger ones spill to one `Vec`
/// per request.
pub(crate) const INLINE_WORKERS: usize = 64;
