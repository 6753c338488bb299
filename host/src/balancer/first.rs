//! Active/standby: every request goes to the first candidate in the order written.

use super::{Balancer, Endpoints, PickContext};

/// The first healthy endpoint (primaries, then backups).
#[derive(Debug)]
pub struct First;

impl Balancer for First {
    fn pick(&self, ctx: &PickContext, endpoints: &Endpoints) -> Option<usize> {
        let candidates = endpoints.candidates(ctx);
        (0..endpoints.len()).find(|&i| candidates.admits_index(endpoints, i))
    }
}
