//! Smooth weighted round robin, nginx's algorithm: with weights 5, 1, 1 the order is
//! `a a b a c a a`, not `a a a a a b c`, so no endpoint gets a burst.
//!
//! The order only depends on the weights, so it is computed once as a schedule of
//! `sum(weights)` slots and requests walk it with one atomic counter: lock-free, and exact
//! over every full cycle. A slot whose endpoint is not a candidate (unhealthy, or a backup
//! while primaries are up) is skipped.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, Endpoints, PickContext};

/// Smooth weighted round robin over a fixed schedule.
#[derive(Debug)]
pub struct RoundRobin {
    schedule: Vec<usize>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// A balancer for endpoints with `weights` (each at least 1).
    pub fn new(weights: &[u32]) -> RoundRobin {
        RoundRobin {
            schedule: schedule(weights),
            next: AtomicUsize::new(0),
        }
    }
}

/// One cycle of nginx's smooth weighted round robin: each step every endpoint's current
/// weight grows by its weight, the largest is chosen and loses the total.
fn schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w.max(1))).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w.max(1));
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i)))
        else {
            break;
        };
        current[best] -= total;
        order.push(best);
    }
    order
}

impl Balancer for RoundRobin {
    fn pick(&self, ctx: &PickContext, endpoints: &Endpoints) -> Option<usize> {
        let candidates = endpoints.candidates(ctx);
        // Relaxed is enough: the counter only spreads load and orders nothing else.
        for _ in 0..self.schedule.len() {
            let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
            let i = self.schedule[slot];
            if candidates.admits_index(endpoints, i) {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cluster, spread};
    use super::*;
    use crate::config::LbPolicy;

    #[test]
    fn smooth_order_as_nginx() {
        assert_eq!(schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(schedule(&[1, 1, 1]), [0, 1, 2]);
        assert_eq!(schedule(&[3, 1]), [0, 0, 1, 0]);
    }

    #[test]
    fn weights_are_exact_over_whole_cycles() {
        let config = cluster(&[(3, false), (1, false)], LbPolicy::RoundRobin);
        let endpoints = Endpoints::new(&config);
        assert_eq!(spread(&config, &endpoints, 4000), [3000, 1000]);
        let none = RoundRobin::new(&[]);
        let empty = Endpoints::new(&cluster(&[], LbPolicy::RoundRobin));
        assert_eq!(none.pick(&PickContext::default(), &empty), None);
    }
}
