//! Consistent hashing on a ring (ketama): each endpoint owns `POINTS_PER_WEIGHT × weight`
//! points on a 64-bit ring, and a key goes to the owner of the first point at or after its
//! hash. Adding or removing one endpoint of N moves only about 1/N of the keys. A key whose
//! owner is not a candidate walks on to the next point whose owner is.

use std::hash::{Hash, Hasher};

use super::{Balancer, Endpoints, PickContext};

/// Ring points per unit of weight: enough for an even spread with few endpoints.
const POINTS_PER_WEIGHT: u32 = 100;

/// A hash ring over the endpoints.
#[derive(Debug)]
pub struct ConsistentHash {
    /// (point, endpoint index), sorted by point.
    ring: Vec<(u64, usize)>,
}

/// A stable 64-bit hash (SipHash with fixed keys): the same in every weir process.
pub fn hash(value: impl Hash) -> u64 {
    #[expect(
        deprecated,
        reason = "SipHasher is stable across processes, as needed here"
    )]
    let mut h = std::hash::SipHasher::new();
    value.hash(&mut h);
    h.finish()
}

impl ConsistentHash {
    /// A ring for endpoints named `names` (their addresses) with `weights`. Points depend
    /// only on the names, so an endpoint keeps its keys when others come or go.
    pub fn new(names: &[String], weights: &[u32]) -> ConsistentHash {
        let mut ring = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let points = POINTS_PER_WEIGHT * weights.get(i).copied().unwrap_or(1);
            for p in 0..points {
                ring.push((hash((name, p)), i));
            }
        }
        ring.sort_unstable();
        ConsistentHash { ring }
    }
}

impl Balancer for ConsistentHash {
    fn pick(&self, ctx: &PickContext, endpoints: &Endpoints) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let key = ctx.hash.unwrap_or_else(|| fastrand::u64(..));
        let start = self.ring.partition_point(|&(point, _)| point < key);
        let candidates = endpoints.candidates(ctx);
        (0..self.ring.len())
            .map(|step| self.ring[(start + step) % self.ring.len()].1)
            .find(|&i| candidates.admits_index(endpoints, i))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::cluster;
    use super::*;
    use crate::config::{HashKey, LbPolicy};

    fn owners(n: usize, keys: u64) -> Vec<usize> {
        let names: Vec<String> = (0..n).map(|i| format!("10.0.0.{}:80", i + 1)).collect();
        let ring = ConsistentHash::new(&names, &vec![1; n]);
        let config = cluster(
            &vec![(1, false); n],
            LbPolicy::ConsistentHash { key: HashKey::Path },
        );
        let endpoints = Endpoints::new(&config);
        (0..keys)
            .map(|k| {
                let ctx = PickContext {
                    hash: Some(hash(k)),
                    tried: 0,
                };
                ring.pick(&ctx, &endpoints).expect("owner")
            })
            .collect()
    }

    #[test]
    fn adding_one_endpoint_of_five_moves_about_a_fifth_of_the_keys_all_to_it() {
        let before = owners(4, 10_000);
        let after = owners(5, 10_000);
        let moved: Vec<usize> = (0..before.len())
            .filter(|&k| before[k] != after[k])
            .collect();
        assert!(
            moved.iter().all(|&k| after[k] == 4),
            "keys moved between old endpoints"
        );
        assert!(
            (1_500..=2_500).contains(&moved.len()),
            "{} of 10000 moved",
            moved.len()
        );
    }

    #[test]
    fn keys_spread_and_stick() {
        let owners = owners(3, 9_000);
        for e in 0..3 {
            let n = owners.iter().filter(|&&o| o == e).count();
            assert!(
                (2_000..=4_000).contains(&n),
                "endpoint {e} owns {n} of 9000"
            );
        }
        assert_eq!(owners, super::tests::owners(3, 9_000));
    }
}
