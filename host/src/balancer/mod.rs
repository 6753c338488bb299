//! Choosing an endpoint of a cluster for one request.
//!
//! A [`Balancer`] only chooses; it owns no connections and does no I/O, so picking is a few
//! atomic operations on the request path. Algorithms live one per file beside this one.

mod round_robin;

pub use round_robin::RoundRobin;

/// What a balancer may look at to choose. Grows as algorithms need more (hash keys, health).
#[derive(Debug, Default)]
pub struct PickContext {}

/// An endpoint-selection algorithm over a fixed list of endpoints, indexed `0..len`.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// The index of the endpoint to use, or `None` when no endpoint can take the request.
    fn pick(&self, ctx: &PickContext) -> Option<usize>;
}
