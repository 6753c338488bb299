//! Least request by the power of two choices (Envoy's default for `LEAST_REQUEST`): pick two
//! different candidates at random by weight and send the request to the one with fewer
//! requests in flight per unit of weight. Nearly as good as scanning every endpoint, at a cost
//! that grows only with the logarithm of the cluster's size while every endpoint is up
//! (binary searches over the primaries' weights), and it never herds every request onto one
//! endpoint that just became idle.

use super::{Balancer, Endpoints, PickContext, weighted_choice_except, weighted_pick};

/// Power-of-two-choices least request, weighted.
#[derive(Debug)]
pub struct LeastRequest;

impl Balancer for LeastRequest {
    fn pick(&self, ctx: &PickContext, endpoints: &Endpoints) -> Option<usize> {
        let candidates = endpoints.candidates(ctx);
        let (total, a) = weighted_pick(endpoints, candidates)?;
        // The second choice is another endpoint whenever there is one, so two endpoints are
        // always compared (with two, an independent draw would repeat half the time).
        let rest = total.saturating_sub(endpoints.weight(a));
        if rest == 0 {
            return Some(a);
        }
        let r = fastrand::u64(0..rest);
        let b = if candidates.all_primaries {
            // `a`'s share taken out of the range: what falls at or after its start moves past it.
            endpoints.primary_share(a).and_then(|(start, weight)| {
                endpoints.primary_by_weight(if r < start { r } else { r + weight })
            })
        } else {
            weighted_choice_except(endpoints, candidates, a, r)
        };
        // An endpoint that went down since `a` was chosen may leave no second: `a` then.
        let Some(b) = b else {
            return Some(a);
        };
        // Compare in_flight / weight without dividing.
        let load = |i: usize| {
            let in_flight = endpoints.get(i).map_or(0, |e| e.in_flight()) as u64;
            (in_flight, endpoints.weight(i))
        };
        let ((fa, wa), (fb, wb)) = (load(a), load(b));
        Some(if fb * wa < fa * wb { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::cluster;
    use super::*;
    use crate::config::LbPolicy;

    #[test]
    fn prefers_the_endpoint_with_fewer_requests_in_flight() {
        let config = cluster(&[(1, false), (1, false)], LbPolicy::LeastRequest);
        let endpoints = Endpoints::new(&config);
        let balancer = LeastRequest;
        // Endpoint 0 is slow: ten requests stuck on it.
        let _stuck: Vec<_> = (0..10).map(|_| endpoints.start(0)).collect();
        let picks = (0..1000)
            .filter(|_| balancer.pick(&PickContext::default(), &endpoints) == Some(1))
            .count();
        // The two choices always differ, so the idle endpoint always wins.
        assert_eq!(picks, 1000);
    }
}
