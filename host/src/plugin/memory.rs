//! The linear memory plugin instances may hold: each instance's own cap (`memory_limit_mb`)
//! and weir's budget for all of them together (`[plugins] memory_budget_mb`), both checked
//! whenever a memory is created or grows. An instance gives back what it drew when its store
//! is dropped. An instance whose memory keeps growing after its first call (a
//! garbage-collected guest's heap) is retired between calls, before it reaches its cap and
//! fails one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// The memory all instances of all plugins may hold at once.
#[derive(Debug)]
pub struct MemoryBudget {
    /// The budget in bytes (changes with the config).
    limit: AtomicUsize,
    /// Bytes held by live instances.
    used: AtomicUsize,
    /// `used`, as `weir_plugin_memory_bytes`.
    gauge: prometheus::IntGauge,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> MemoryBudget {
        MemoryBudget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            gauge: crate::metrics::metrics().plugin_memory.clone(),
        }
    }

    /// Sets the budget; instances holding more than a lowered budget keep what they hold,
    /// but no memory grows until the total is under it.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Relaxed);
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    /// Bytes held by live instances.
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// Draws `bytes` if the budget has them.
    fn draw(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Relaxed);
        if before.saturating_add(bytes) > self.limit() {
            self.used.fetch_sub(bytes, Relaxed);
            return false;
        }
        self.gauge.add(i64::try_from(bytes).unwrap_or(i64::MAX));
        true
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Relaxed);
        self.gauge.sub(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// One instance's limiter: its own cap first, then the shared budget.
pub(crate) struct Limits {
    own: StoreLimits,
    budget: Arc<MemoryBudget>,
    /// What this instance drew from the budget.
    drawn: usize,
    /// The instance's cap per memory.
    cap: usize,
    /// The size of its largest memory (memories only grow, so the largest size granted).
    largest: usize,
    /// Past this size its largest memory has outgrown the instance ([`Limits::outgrown`]).
    retire_above: usize,
}

impl Limits {
    /// An instance capped at `memory_limit` bytes, drawing on `budget`. Growing past either
    /// traps: a guest that cannot have memory is stopped, not left to handle the failure.
    pub(crate) fn new(memory_limit: usize, budget: Arc<MemoryBudget>) -> Limits {
        let own = StoreLimitsBuilder::new()
            .memory_size(memory_limit)
            .trap_on_grow_failure(true)
            .build();
        Limits {
            own,
            budget,
            drawn: 0,
            cap: memory_limit,
            largest: 0,
            retire_above: usize::MAX,
        }
    }

    /// Marks the instance's own size: what its largest memory holds now, and it has outgrown
    /// itself once that memory has grown three quarters of the way from here to the cap.
    /// Called once, after its first call, so that what a guest sets up lazily on its first
    /// call (a runtime's heap, a table) counts as its size, not as growth. A second memory
    /// (an adapter's) is measured against the largest one's mark: retired no sooner.
    fn settle(&mut self) {
        let room = self.cap.saturating_sub(self.largest);
        self.retire_above = self.largest + room / 4 * 3;
    }

    /// Whether the instance's memory has grown so far since [`Limits::settle`] that it should
    /// not serve again: a guest whose heap only grows (a JavaScript engine's) would otherwise
    /// reach the cap in the middle of a call and fail it.
    fn outgrown(&self) -> bool {
        self.largest > self.retire_above
    }

    /// After an instance's `uses`-th call that went well: whether it may serve again as far
    /// as its memory goes. The first call settles its size ([`Limits::settle`]); after that,
    /// an instance that has outgrown itself is not kept.
    pub(crate) fn keeps_after(&mut self, uses: u32) -> bool {
        if uses == 1 {
            self.settle();
            return true;
        }
        !self.outgrown()
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if !self.own.memory_growing(current, desired, maximum)? {
            return Ok(false);
        }
        let more = desired.saturating_sub(current);
        if !self.budget.draw(more) {
            // "when growing memory" makes it a `memory` failure, as the own cap's trap is.
            wasmtime::bail!(
                "weir's memory budget for plugins ({} MiB) is spent when growing memory to {desired} bytes",
                self.budget.limit() >> 20
            );
        }
        self.drawn += more;
        self.largest = self.largest.max(desired);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.own.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.own.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.own.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.own.instances()
    }

    fn tables(&self) -> usize {
        self.own.tables()
    }

    fn memories(&self) -> usize {
        self.own.memories()
    }
}

impl Drop for Limits {
    fn drop(&mut self) {
        self.budget.give_back(self.drawn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_draw_on_one_budget_and_give_it_back_when_dropped() {
        let budget = Arc::new(MemoryBudget::new(10 << 20));
        let mut a = Limits::new(8 << 20, budget.clone());
        let mut b = Limits::new(8 << 20, budget.clone());
        assert!(a.memory_growing(0, 6 << 20, None).expect("a fits"));
        let refused = b
            .memory_growing(0, 6 << 20, None)
            .expect_err("over the budget");
        assert!(
            refused.to_string().contains("when growing memory"),
            "{refused}"
        );
        assert!(b.memory_growing(0, 4 << 20, None).expect("b fits"));
        assert_eq!(budget.used(), 10 << 20);
        a.memory_growing(6 << 20, 9 << 20, None)
            .expect_err("over its own cap");
        drop(a);
        assert_eq!(budget.used(), 4 << 20, "a's memory is back");
        assert!(b.memory_growing(4 << 20, 8 << 20, None).expect("b grows"));
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn an_instance_has_outgrown_itself_three_quarters_of_the_way_to_its_cap() {
        let budget = Arc::new(MemoryBudget::new(usize::MAX));
        let mut limits = Limits::new(64 << 20, budget);
        // Instantiation, configure and the first call: 16 MiB is the instance's own.
        assert!(limits.memory_growing(0, 16 << 20, None).expect("fits"));
        limits.settle();
        assert!(!limits.outgrown());
        // A small second memory (an adapter's) changes nothing.
        assert!(limits.memory_growing(0, 1 << 20, None).expect("fits"));
        // The heap grows call after call: three quarters of the 48 MiB left is 36 MiB.
        assert!(
            limits
                .memory_growing(16 << 20, 52 << 20, None)
                .expect("fits")
        );
        assert!(!limits.outgrown(), "at the mark, not past it");
        assert!(
            limits
                .memory_growing(52 << 20, 53 << 20, None)
                .expect("fits")
        );
        assert!(limits.outgrown());
    }
}
