//! Header changes as a filter makes them: in order, their names (lower case) and values kept
//! one after another in one buffer, so a change allocates nothing of its own and the lot is
//! freed at once. `answer.rs` lowers them where they are; the generated bindings' `HeaderOp`s
//! are made from them only where a WIT call takes those ([`Ops::to_header_ops`]).

use crate::bindings::weir::plugin::types::HeaderOp;

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Replace every value of the header with this one.
    Set,
    /// Add a value, keeping existing ones.
    Append,
    /// Remove every value of the header.
    Remove,
}

/// One change: its kind, and where its name and value are in [`Ops::text`] (the name from
/// `start` to `name_end`, the value from there to `end`; a `remove` has none).
#[derive(Debug, Clone, Copy)]
struct Op {
    kind: Kind,
    start: usize,
    name_end: usize,
    end: usize,
}

/// Header changes, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ops {
    /// Every change's name and value, one after another.
    text: Vec<u8>,
    ops: Vec<Op>,
}

/// A change as read back: its kind, its name (lower case) and its value (empty for a
/// `remove`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Change<'o> {
    pub(crate) kind: Kind,
    pub(crate) name: &'o [u8],
    pub(crate) value: &'o [u8],
}

/// Room the first change makes: four changes, and names and values of 128 bytes in all
/// (`Vec`'s growth path from nothing costs under Cranelift about twice an allocation of a
/// known size).
const FIRST_OPS: usize = 4;
const FIRST_TEXT: usize = 128;

impl Ops {
    /// No changes (for a `static`).
    #[cfg_attr(
        feature = "without-request-hook",
        expect(dead_code, reason = "for answer.rs, which that feature leaves out")
    )]
    pub(crate) const fn new() -> Ops {
        Ops {
            text: Vec::new(),
            ops: Vec::new(),
        }
    }

    /// Adds a change to header `name` (lower-cased here, as weir's header lists have them).
    pub(crate) fn push(&mut self, kind: Kind, name: &str, value: &[u8]) {
        if self.ops.capacity() == 0 {
            self.ops = Vec::with_capacity(FIRST_OPS);
            self.text = Vec::with_capacity(FIRST_TEXT.max(name.len() + value.len()));
        }
        let start = self.text.len();
        self.text.extend_from_slice(name.as_bytes());
        if crate::http::has_upper_case(name.as_bytes()) {
            self.text[start..].make_ascii_lowercase();
        }
        let name_end = self.text.len();
        if kind != Kind::Remove {
            self.text.extend_from_slice(value);
        }
        self.ops.push(Op {
            kind,
            start,
            name_end,
            end: self.text.len(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The changes, in order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = Change<'_>> + ExactSizeIterator {
        self.ops.iter().map(|op| self.change(op))
    }

    /// The `i`-th change and those after it.
    pub(crate) fn from(&self, i: usize) -> impl Iterator<Item = Change<'_>> {
        self.ops.iter().skip(i).map(|op| self.change(op))
    }

    /// The changes as the generated bindings' `HeaderOp`s (for the WIT calls that take them).
    pub(crate) fn to_header_ops(&self) -> Vec<HeaderOp> {
        self.iter().map(Change::to_header_op).collect()
    }

    /// The buffer the names and values are in, and each change's kind and the offsets of
    /// its name and value in it (`answer.rs` lowers them in place).
    #[cfg_attr(
        feature = "without-request-hook",
        expect(dead_code, reason = "for answer.rs, which that feature leaves out")
    )]
    pub(crate) fn raw(&self) -> (&[u8], impl Iterator<Item = (Kind, usize, usize, usize)>) {
        let ops = self
            .ops
            .iter()
            .map(|op| (op.kind, op.start, op.name_end, op.end));
        (&self.text, ops)
    }

    fn change(&self, op: &Op) -> Change<'_> {
        Change {
            kind: op.kind,
            name: self.text.get(op.start..op.name_end).unwrap_or_default(),
            value: self.text.get(op.name_end..op.end).unwrap_or_default(),
        }
    }
}

impl Change<'_> {
    /// The name as text (it was a `&str`, lower-cased ASCII letter by letter: still UTF-8).
    pub(crate) fn name_text(&self) -> String {
        String::from_utf8_lossy(self.name).into_owned()
    }

    pub(crate) fn to_header_op(self) -> HeaderOp {
        match self.kind {
            Kind::Set => HeaderOp::Set((self.name_text(), self.value.to_vec())),
            Kind::Append => HeaderOp::Append((self.name_text(), self.value.to_vec())),
            Kind::Remove => HeaderOp::Remove(self.name_text()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_back_in_order_with_their_names_lower_cased() {
        let mut ops = Ops::default();
        ops.push(Kind::Set, "X-One", b"1");
        ops.push(Kind::Remove, "x-two", b"ignored");
        ops.push(Kind::Append, "x-three", b"");
        ops.push(Kind::Append, "X-FOUR-LONGER-THAN-A-WORD", b"four");
        ops.push(Kind::Set, "x-five", b"5");
        assert_eq!(
            format!("{:?}", ops.to_header_ops()),
            format!(
                "{:?}",
                vec![
                    HeaderOp::Set(("x-one".into(), b"1".to_vec())),
                    HeaderOp::Remove("x-two".into()),
                    HeaderOp::Append(("x-three".into(), Vec::new())),
                    HeaderOp::Append(("x-four-longer-than-a-word".into(), b"four".to_vec())),
                    HeaderOp::Set(("x-five".into(), b"5".to_vec())),
                ]
            )
        );
        let after: Vec<&[u8]> = ops.from(3).map(|c| c.name).collect();
        assert_eq!(after, [&b"x-four-longer-than-a-word"[..], b"x-five"]);
    }

    #[test]
    fn names_are_lower_cased_wherever_their_capital_is_and_values_kept_as_given() {
        // `push` looks for a capital a word at a time: every length around a word and a half
        // word, with the capital at every place.
        let mut ops = Ops::default();
        let mut expected = Vec::new();
        for len in 1..=20 {
            for at in 0..len {
                let mut name = "x".repeat(len);
                name.replace_range(at..=at, "Q");
                let value = name.as_bytes().to_vec();
                ops.push(Kind::Append, &name, &value);
                expected.push(HeaderOp::Append((name.to_ascii_lowercase(), value)));
            }
        }
        // Only ASCII letters change (the name stays UTF-8), and a `remove` keeps no value.
        ops.push(Kind::Set, "X-Émoji-✓", b"V\xff");
        expected.push(HeaderOp::Set(("x-Émoji-✓".into(), b"V\xff".to_vec())));
        ops.push(Kind::Remove, "X-GONE", b"dropped");
        expected.push(HeaderOp::Remove("x-gone".into()));
        assert_eq!(
            format!("{:?}", ops.to_header_ops()),
            format!("{expected:?}")
        );
        assert_eq!(ops.iter().last().map(|c| c.value), Some(&b""[..]));
    }

    #[test]
    fn a_change_longer_than_the_first_room_is_kept_whole() {
        let mut ops = Ops::default();
        let long = vec![b'v'; 1000];
        ops.push(Kind::Set, "x-short", b"s");
        ops.push(Kind::Set, "x-long", &long);
        let values: Vec<usize> = ops.iter().map(|c| c.value.len()).collect();
        assert_eq!(values, [1, 1000]);
    }
}
