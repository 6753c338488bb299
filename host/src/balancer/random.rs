//! Weighted random choice.

use super::{Balancer, Endpoints, PickContext, weighted_pick};

/// Picks an endpoint at random, in proportion to its weight.
#[derive(Debug)]
pub struct Random;

impl Balancer for Random {
    fn pick(&self, ctx: &PickContext, endpoints: &Endpoints) -> Option<usize> {
        let candidates = endpoints.candidates(ctx);
        weighted_pick(endpoints, candidates).map(|(_, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cluster, spread};
    use super::*;
    use crate::config::LbPolicy;

    #[test]
    fn follows_the_weights() {
        let config = cluster(&[(3, false), (1, false)], LbPolicy::Random);
        let endpoints = Endpoints::new(&config);
        let s = spread(&config, &endpoints, 40_000);
        // 30,000 expected; 5 standard deviations is about 430.
        assert!((29_500..=30_500).contains(&s[0]), "{s:?}");
    }
}
