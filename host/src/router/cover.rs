//! Whether one route's path takes every path another's matches, when the first is a
//! `path_regex`: decided on their automata, so `weir check` warns about a regex that shadows
//! a later route only when it certainly does.
//!
//! Both paths become anchored lazy DFAs (regex-automata's `hybrid`, the engine under
//! `regex`, with the same syntax and Unicode defaults as the router's own regexes; a later
//! prefix `P` is the regex `P(?s:.*)`, an exact path itself), whose states are made only as
//! the walk reaches them. Their product is walked over every path that can follow: the
//! visible ASCII bytes a request target's path may hold (not `?`, `#`, spaces or controls)
//! and whole UTF-8 characters (the `http` crate lets a path carry them), each character's
//! bytes in order. The earlier route covers the later one if, at every character boundary
//! where the later one would match, the earlier one matches too. The walk sees a superset
//! of the paths weir can route, so a "covers" answer is certain; whatever cannot be decided
//! within the bounds (a pattern the DFA cannot run, a cache that would have to be cleared,
//! too many states to visit) answers "no": no warning rather than a wrong one.

use std::cell::RefCell;
use std::collections::HashSet;

use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::start;
use regex_automata::{Anchored, Input};

/// The most memory one lazy DFA's state cache may take; filling it gives up (a cleared
/// cache would invalidate the states the walk holds).
const CACHE_BYTES: usize = 1 << 20;

/// The most states of the product the walk visits before it gives up.
const MAX_VISITED: usize = 20_000;

/// A later route's path, as its route wrote it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Path<'a> {
    /// `path_regex`: the pattern as written (the router anchors it).
    Regex(&'a str),
    /// `path_prefix`.
    Prefix(&'a str),
    /// `path`.
    Exact(&'a str),
}

/// A path pattern as an anchored lazy DFA, with its state cache.
pub(super) struct Dfa {
    dfa: DFA,
    cache: RefCell<Cache>,
    start: LazyStateID,
}

impl std::fmt::Debug for Dfa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dfa")
    }
}

/// A lazy DFA step that could not be taken without clearing the cache, or was refused.
struct GaveUp;

impl Dfa {
    /// The DFA of `path`, anchored at both ends as the router matches it; `None` if it cannot
    /// be built, or run on a path.
    pub(super) fn new(path: Path<'_>) -> Option<Dfa> {
        let pattern = match path {
            Path::Regex(source) => format!("^(?:{source})$"),
            Path::Prefix(prefix) => format!("^{}(?s:.*)$", regex::escape(prefix)),
            Path::Exact(exact) => format!("^{}$", regex::escape(exact)),
        };
        let config = DFA::config()
            .cache_capacity(CACHE_BYTES)
            .skip_cache_capacity_check(true);
        let dfa = DFA::builder().configure(config).build(&pattern).ok()?;
        let mut cache = dfa.create_cache();
        // Only to be sure the DFA runs on a path at all (no quit bytes on ASCII).
        dfa.try_search_fwd(&mut cache, &Input::new("/").anchored(Anchored::Yes))
            .ok()?;
        let start = dfa
            .start_state(&mut cache, &start::Config::new().anchored(Anchored::Yes))
            .ok()?;
        Some(Dfa {
            dfa,
            cache: RefCell::new(cache),
            start,
        })
    }

    /// The state after `byte`, unless the cache would have to be cleared (which would
    /// invalidate every state the caller holds).
    fn next(&self, cache: &mut Cache, state: LazyStateID, byte: u8) -> Result<LazyStateID, GaveUp> {
        let clears = cache.clear_count();
        let next = self
            .dfa
            .next_state(cache, state, byte)
            .map_err(|_| GaveUp)?;
        if cache.clear_count() != clears || next.is_quit() {
            return Err(GaveUp);
        }
        Ok(next)
    }

    /// Whether the path read so far, ending here, matches.
    fn accepts(&self, cache: &mut Cache, state: LazyStateID) -> Result<bool, GaveUp> {
        let clears = cache.clear_count();
        let end = self.dfa.next_eoi_state(cache, state).map_err(|_| GaveUp)?;
        if cache.clear_count() != clears {
            return Err(GaveUp);
        }
        Ok(end.is_match())
    }

    /// One of the shortest paths this matches, if it matches any within the bounds: a cheap
    /// first test of a pair (an earlier regex that does not match it covers nothing here).
    pub(super) fn witness(&self) -> Option<String> {
        let mut cache = self.cache.try_borrow_mut().ok()?;
        let cache = &mut *cache;
        let mut seen = HashSet::from([(self.start, Utf8::Boundary)]);
        let mut level = vec![(self.start, Utf8::Boundary, Vec::new())];
        while !level.is_empty() {
            let mut deeper = Vec::new();
            for (state, at, path) in level {
                if at == Utf8::Boundary && self.accepts(cache, state).ok()? {
                    return String::from_utf8(path).ok();
                }
                let mut gave_up = false;
                at.each_next(|byte, to| match self.next(cache, state, byte) {
                    Ok(next) if !next.is_dead() && seen.insert((next, to)) => {
                        let mut longer = path.clone();
                        longer.push(byte);
                        deeper.push((next, to, longer));
                    }
                    Ok(_) => {}
                    Err(GaveUp) => gave_up = true,
                });
                if gave_up || seen.len() > MAX_VISITED {
                    return None;
                }
            }
            level = deeper;
        }
        None
    }
}

/// Whether every path `later` matches, `earlier` matches too; `false` when that cannot be
/// decided within the bounds.
pub(super) fn covers(earlier: &Dfa, later: &Dfa) -> bool {
    let (Ok(mut a_cache), Ok(mut b_cache)) =
        (earlier.cache.try_borrow_mut(), later.cache.try_borrow_mut())
    else {
        return false;
    };
    walk(earlier, &mut a_cache, later, &mut b_cache).unwrap_or(false)
}

/// The walk over the product of `earlier` and `later` behind [`covers`].
fn walk(
    earlier: &Dfa,
    a_cache: &mut Cache,
    later: &Dfa,
    b_cache: &mut Cache,
) -> Result<bool, GaveUp> {
    let mut visited = HashSet::new();
    let mut next = vec![(earlier.start, later.start, Utf8::Boundary)];
    while let Some(node) = next.pop() {
        if !visited.insert(node) {
            continue;
        }
        if visited.len() > MAX_VISITED {
            return Err(GaveUp);
        }
        let (sa, sb, at) = node;
        if sa.is_dead() {
            // The earlier route can match nothing more while the later one may: not certain.
            return Ok(false);
        }
        if at == Utf8::Boundary && later.accepts(b_cache, sb)? && !earlier.accepts(a_cache, sa)? {
            return Ok(false);
        }
        let mut step = Ok(());
        at.each_next(|byte, to| {
            if step.is_err() {
                return;
            }
            step = (|| {
                let nb = later.next(b_cache, sb, byte)?;
                // A byte no path of the later route's goes on with leaves nothing to check.
                if !nb.is_dead() {
                    next.push((earlier.next(a_cache, sa, byte)?, nb, to));
                }
                Ok(())
            })();
        });
        step?;
    }
    Ok(true)
}

/// Where a path's bytes stand within UTF-8 (RFC 3629's table of well-formed sequences).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Utf8 {
    /// Between characters: a path may end here.
    Boundary,
    /// Inside a character, this many continuation bytes (80..=BF) to go.
    Continue(u8),
    /// After E0: A0..=BF, then one more.
    AfterE0,
    /// After ED: 80..=9F (no surrogates), then one more.
    AfterEd,
    /// After F0: 90..=BF, then two more.
    AfterF0,
    /// After F4: 80..=8F (nothing past U+10FFFF), then two more.
    AfterF4,
}

impl Utf8 {
    /// Calls `each` with every byte a path may hold next, and where it leaves the path.
    fn each_next(self, mut each: impl FnMut(u8, Utf8)) {
        let mut range = |from: u8, to: u8, then: Utf8| (from..=to).for_each(|b| each(b, then));
        match self {
            Utf8::Boundary => {
                // Visible ASCII but what ends a path.
                range(0x21, 0x22, Utf8::Boundary);
                range(0x24, 0x3E, Utf8::Boundary);
                range(0x40, 0x7E, Utf8::Boundary);
                range(0xC2, 0xDF, Utf8::Continue(1));
                range(0xE0, 0xE0, Utf8::AfterE0);
                range(0xE1, 0xEC, Utf8::Continue(2));
                range(0xED, 0xED, Utf8::AfterEd);
                range(0xEE, 0xEF, Utf8::Continue(2));
                range(0xF0, 0xF0, Utf8::AfterF0);
                range(0xF1, 0xF3, Utf8::Continue(3));
                range(0xF4, 0xF4, Utf8::AfterF4);
            }
            Utf8::Continue(1) => range(0x80, 0xBF, Utf8::Boundary),
            Utf8::Continue(n) => range(0x80, 0xBF, Utf8::Continue(n - 1)),
            Utf8::AfterE0 => range(0xA0, 0xBF, Utf8::Continue(1)),
            Utf8::AfterEd => range(0x80, 0x9F, Utf8::Continue(1)),
            Utf8::AfterF0 => range(0x90, 0xBF, Utf8::Continue(2)),
            Utf8::AfterF4 => range(0x80, 0x8F, Utf8::Continue(2)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Dfa, Path, covers};

    fn check(earlier: Path<'_>, later: Path<'_>) -> bool {
        let earlier = Dfa::new(earlier).expect("earlier builds");
        let later = Dfa::new(later).expect("later builds");
        covers(&earlier, &later)
    }

    #[test]
    fn a_regex_covers_what_it_certainly_takes() {
        use Path::{Exact, Prefix, Regex};
        let table = [
            // earlier, later, covered
            (Regex("/api/.*"), Prefix("/api/"), true),
            (Regex("/api/.*"), Prefix("/api/v1/"), true),
            (Regex("/api.*"), Prefix("/api"), true),
            (Regex("/.*"), Prefix("/"), true),
            (Regex("(?s)/api/.*"), Prefix("/api/"), true),
            (Regex("/api(/.*)?"), Prefix("/api/"), true),
            (Regex("/api/.*"), Regex("/api/v[0-9]+/.*"), true),
            (Regex("/api/.+"), Exact("/api/x"), true),
            (Regex("/[a-z]+/.*"), Regex("/(api|web)/.*"), true),
            // Not every path of the later route: no warning.
            (Regex("/api/.+"), Prefix("/api/"), false), // "/api/" itself
            (Regex("/api/[a-z]*"), Prefix("/api/"), false), // "/api/1"
            (Regex("/api/[ -~]*"), Prefix("/api/"), false), // "/api/é"
            (Regex("/api/.*"), Prefix("/ap"), false),
            (Regex("/api/v1/.*"), Regex("/api/v[0-9]+/.*"), false),
            (Regex("/(api|web)/.*"), Regex("/[a-z]+/.*"), false),
            (Regex("/api/\\w*"), Prefix("/api/"), false),
        ];
        for (earlier, later, expect) in table {
            assert_eq!(
                check(earlier, later),
                expect,
                "{earlier:?} covers {later:?}"
            );
        }
    }

    #[test]
    fn a_witness_is_a_shortest_path_the_pattern_matches() {
        let witness = |path| Dfa::new(path).expect("builds").witness();
        assert_eq!(
            witness(Path::Regex("/api/v[0-9]+/.*")).as_deref(),
            Some("/api/v0/")
        );
        assert_eq!(witness(Path::Prefix("/svc/")).as_deref(), Some("/svc/"));
        assert_eq!(witness(Path::Regex("/é+")).as_deref(), Some("/é"));
        // Nothing a path can hold: no witness.
        assert_eq!(witness(Path::Regex("/a b")), None);
    }

    #[test]
    fn a_regex_the_dfa_cannot_decide_covers_nothing() {
        // Unicode word boundaries: the DFA cannot run them, so no answer is certain.
        assert!(Dfa::new(Path::Regex("/api/\\b.*")).is_none());
    }
}
