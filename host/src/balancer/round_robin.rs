//! Plain round robin: each request takes the next endpoint in order.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, PickContext};

/// Round robin over `len` endpoints, lock-free.
#[derive(Debug)]
pub struct RoundRobin {
    len: usize,
    next: AtomicUsize,
}

impl RoundRobin {
    /// A balancer over `len` endpoints.
    pub fn new(len: usize) -> RoundRobin {
        RoundRobin {
            len,
            next: AtomicUsize::new(0),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, _ctx: &PickContext) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        // Relaxed is enough: the counter only spreads load and orders nothing else.
        Some(self.next.fetch_add(1, Ordering::Relaxed) % self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_through_every_endpoint() {
        let rr = RoundRobin::new(3);
        let picks: Vec<_> = (0..7).map(|_| rr.pick(&PickContext::default())).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0].map(Some));
        assert_eq!(RoundRobin::new(0).pick(&PickContext::default()), None);
    }
}
