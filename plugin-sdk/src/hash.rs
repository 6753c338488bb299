//! Maps keyed by what requests carry: hashbrown's map with foldhash, seeded once per map from
//! `wasi:random`.
//!
//! std's `HashMap` hashes with SipHash-1-3, which costs a few hundred wasm instructions per
//! look-up even for a short key (rate-limit's per-key counts and jwt-auth's token cache were
//! about 1,000 instructions a request between them). foldhash is hashbrown's own default, about
//! 160 for the two (`ROUTE=three bench/callgrind.sh` with the plugins' names, BENCHMARKS.md
//! "Session 43"). Keyed with 64 random bits per map, it keeps a client from choosing keys
//! that collide, which a fixed seed would not. hashbrown's map (the one std wraps) also
//! looks a key up by a borrowed form of it ([`Equivalent`], `entry_ref`), so a request's key
//! is copied only when it is first kept.

use std::hash::BuildHasher;

/// A `HashMap` whose hasher is [`RandomState`].
pub type HashMap<K, V> = hashbrown::HashMap<K, V, RandomState>;

pub use hashbrown::Equivalent;

/// foldhash's hasher with a per-map seed taken from std's randomly keyed state (which reads
/// `wasi:random` once per instance).
#[derive(Clone, Debug)]
pub struct RandomState(foldhash::fast::SeedableRandomState);

impl Default for RandomState {
    fn default() -> RandomState {
        let seed = std::hash::RandomState::new().hash_one(0_u8);
        RandomState(foldhash::fast::SeedableRandomState::with_seed(
            seed,
            foldhash::SharedSeed::global_random(),
        ))
    }
}

impl BuildHasher for RandomState {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::{HashMap, RandomState};

    #[test]
    fn two_maps_hash_a_key_differently() {
        let (a, b) = (RandomState::default(), RandomState::default());
        assert_ne!(a.hash_one("alice"), b.hash_one("alice"));
        assert_eq!(a.hash_one("alice"), a.clone().hash_one("alice"));
    }

    /// Every hasher a map builds must be seeded alike, or it would not find its own keys.
    #[test]
    fn a_map_finds_what_it_holds() {
        let mut map = HashMap::default();
        map.insert("alice".to_owned(), 1);
        assert_eq!(map.get("alice"), Some(&1));
        assert_eq!(map.get("bob"), None);
    }
}
