//! Whether one route's path takes every path another's matches, when the first is a
//! `path_regex`: decided on their automata, so `weir check` warns about a regex that shadows
//! a later route only when it certainly does.
//!
//! Both paths become anchored DFAs (regex-automata, the engine under `regex`, with the same
//! syntax and Unicode defaults as the router's own regexes; a later prefix `P` is the regex
//! `P(?s:.*)`, an exact path itself). Their product is then walked over every path that
//! can follow: the visible ASCII bytes a request target's path may hold (not `?`, `#`,
//! spaces or controls) and whole UTF-8 characters (the `http` crate lets a path carry
//! them), each character's bytes in order. The earlier route covers the later one if, at
//! every character boundary where the later one would match, the earlier one matches too.
//! The walk sees a superset of the paths weir can route, so a "covers" answer is certain;
//! whatever cannot be decided within the bounds (a DFA too large to build, a pattern the
//! DFA cannot run, too many states to visit) answers "no": no warning rather than a wrong
//! one.

use std::collections::HashSet;

use regex_automata::dfa::{Automaton, StartKind, dense};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, Input};

/// The most memory one DFA may take to build, and to keep.
const DFA_BYTES: usize = 1 << 20;

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

/// A path pattern as an anchored DFA.
pub(super) struct Dfa {
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
}

impl std::fmt::Debug for Dfa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dfa")
    }
}

impl Dfa {
    /// The DFA of `path`, anchored at both ends as the router matches it; `None` if it cannot
    /// be built within the bounds.
    pub(super) fn new(path: Path<'_>) -> Option<Dfa> {
        let pattern = match path {
            Path::Regex(source) => format!("^(?:{source})$"),
            Path::Prefix(prefix) => format!("^{}(?s:.*)$", regex::escape(prefix)),
            Path::Exact(exact) => format!("^{}$", regex::escape(exact)),
        };
        let config = dense::Config::new()
            .start_kind(StartKind::Anchored)
            .dfa_size_limit(Some(DFA_BYTES))
            .determinize_size_limit(Some(DFA_BYTES));
        let dfa = dense::Builder::new()
            .configure(config)
            .build(&pattern)
            .ok()?;
        let start = dfa
            .start_state(&start::Config::new().anchored(Anchored::Yes))
            .ok()?;
        // Only to be sure the DFA runs on a path at all (no quit bytes on ASCII).
        dfa.try_search_fwd(&Input::new("/").anchored(Anchored::Yes))
            .ok()?;
        Some(Dfa { dfa, start })
    }

    /// Whether the path read so far, ending here, matches.
    fn accepts(&self, state: StateID) -> bool {
        self.dfa.is_match_state(self.dfa.next_eoi_state(state))
    }
}

/// Whether every path `later` matches, `earlier` matches too; `false` when that cannot be
/// decided within the bounds.
pub(super) fn covers(earlier: &Dfa, later: &Dfa) -> bool {
    let (a, b) = (&earlier.dfa, &later.dfa);
    let mut visited = HashSet::new();
    let mut next = vec![(earlier.start, later.start, Utf8::Boundary)];
    while let Some(node) = next.pop() {
        if !visited.insert(node) {
            continue;
        }
        if visited.len() > MAX_VISITED {
            return false;
        }
        let (sa, sb, at) = node;
        if b.is_dead_state(sb) {
            // No path of the later route's goes on this way.
            continue;
        }
        if a.is_quit_state(sa) || b.is_quit_state(sb) || a.is_dead_state(sa) {
            // Undecidable here, or the earlier route can match nothing more while the later
            // one may: not certain.
            return false;
        }
        if at == Utf8::Boundary && later.accepts(sb) && !earlier.accepts(sa) {
            return false;
        }
        at.each_next(|byte, to| next.push((a.next_state(sa, byte), b.next_state(sb, byte), to)));
    }
    true
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
    fn a_regex_the_dfa_cannot_decide_covers_nothing() {
        // Unicode word boundaries: the DFA cannot run them, so no answer is certain.
        assert!(Dfa::new(Path::Regex("/api/\\b.*")).is_none());
        // Too large to build within the bound.
        assert!(Dfa::new(Path::Regex("/(\\w{50}){50}")).is_none());
    }
}
