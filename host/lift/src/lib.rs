//! The answer of `weir:plugin/request-hook.on-request` (0.3.7), and any `list<header-op>`,
//! lifted out of a plugin's memory in one pass: the record, its case and its lists of header
//! changes read straight from their canonical ABI layout. Kept apart so that `weir-host`
//! itself can forbid `unsafe` code: wasmtime's `ComponentType` and `Lift` are unsafe traits.
//!
//! wasmtime's generic lifting reads each field and element through the type information of
//! the record, the variant, the tuple and each string and byte list: a layout computed per
//! field, a range and fuel check and an options look-up per string, a `Cow` turned into a
//! `String` (BENCHMARKS.md, session 40: about 670 instructions for one `set`). Once the types
//! have been checked (by the embedder's own derived types, at `get_typed_func`), the layout is
//! fixed, so [`Answer`] and [`HeaderOps`] read it directly; each string and byte list is still
//! checked against the memory's bounds, charged to the call's host-call fuel, and each string
//! validated as UTF-8, so a plugin's answer is refused (the call fails) exactly where the
//! generic lift would refuse it. A local response (`respond`), and any answer from a plugin
//! whose strings are not UTF-8, take the generic lift.
//!
//! The layouts read (canonical ABI, 32-bit memory, little-endian; each row a 4-byte word):
//!
//! ```text
//! request-answer (32 bytes)  0 case (u8: 0 continue, 1 respond)
//!   continue                 4 headers ptr   8 headers len   12 path case (u8: 0 none, 1 some)
//!                           16 path ptr     20 path len
//!                           24 response-headers ptr          28 response-headers len
//! header-op (20 bytes)       0 case (u8: 0 set, 1 append, 2 remove)   4 name ptr   8 name len
//!                           12 value ptr    16 value len (set and append: the tuple's list<u8>)
//! ```

#![deny(unsafe_code)]

use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift};
use wasmtime::{ValRaw, bail};

/// The header change type a [`HeaderOps`] holds: `weir:plugin/types.header-op` as the
/// embedder's bindings generate it (`ComponentType` checks that the plugin's type is that
/// variant, case for case; `Lift` is the generic lift, used for strings in another encoding
/// than UTF-8).
pub trait HeaderOp: ComponentType + Lift {
    /// `set(tuple<string, list<u8>>)`.
    fn set(name: String, value: Vec<u8>) -> Self;
    /// `append(tuple<string, list<u8>>)`.
    fn append(name: String, value: Vec<u8>) -> Self;
    /// `remove(string)`.
    fn remove(name: String) -> Self;
}

/// A `list<header-op>`, lifted in one pass over its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderOps<T>(pub Vec<T>);

/// The size of a `header-op` in memory: a one-byte case, then a payload aligned to 4 of at
/// most two pointer-length pairs.
const ELEMENT: usize = 20;

/// Its alignment.
const ALIGN: usize = 4;

/// The size of a `request-answer` in memory.
const ANSWER: usize = 32;

// SAFETY: a `list<header-op>` is a pointer and a length, in memory and flat, as any list:
// the ABI and lowered form are those of `Vec<T>`'s, and `typecheck` is `Vec<T>`'s, so a
// `HeaderOps<T>` is only ever lifted from a list whose elements are `T`'s variant.
#[allow(unsafe_code, reason = "wasmtime's ComponentType is an unsafe trait")]
unsafe impl<T: HeaderOp> ComponentType for HeaderOps<T> {
    type Lower = [ValRaw; 2];

    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Vec<T> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: every read is of the memory slice wasmtime lends (`LiftContext::memory`), bounds
// checked; nothing is written.
#[allow(unsafe_code, reason = "wasmtime's Lift is an unsafe trait")]
unsafe impl<T: HeaderOp> Lift for HeaderOps<T> {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        let [ptr, len] = [src[0].get_u32(), src[1].get_u32()];
        if !utf8(cx) {
            return <Vec<T> as Lift>::linear_lift_from_flat(cx, ty, src).map(HeaderOps);
        }
        lift(cx, ptr, len).map(HeaderOps)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        let (Some(ptr), Some(len)) = (word(bytes, 0), word(bytes, 4)) else {
            bail!("a list's pointer and length out of the bytes given")
        };
        if !utf8(cx) {
            return <Vec<T> as Lift>::linear_lift_from_memory(cx, ty, bytes).map(HeaderOps);
        }
        lift(cx, ptr, len).map(HeaderOps)
    }
}

/// `request-answer` as the embedder keeps it, made from its parts.
pub trait RequestAnswer: Sized + Send + Sync + 'static {
    /// The record as the embedder's bindings would lift it: its type check, and the generic
    /// lift (a local response; strings in another encoding than UTF-8).
    type Checked: ComponentType + Lift + Into<Self>;
    /// A header change.
    type Op: HeaderOp;
    /// `continue`, with the request's header changes and new target, and the response's
    /// header changes.
    fn proceed(headers: Vec<Self::Op>, path: Option<String>, response: Vec<Self::Op>) -> Self;
}

/// A `request-answer`, lifted in one pass unless it is a local response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T>(pub T);

// SAFETY: the ABI, lowered form and type check are `T::Checked`'s, the record's own, so an
// `Answer<T>` is only ever lifted from a `request-answer`.
#[allow(unsafe_code, reason = "wasmtime's ComponentType is an unsafe trait")]
unsafe impl<T: RequestAnswer> ComponentType for Answer<T> {
    type Lower = <T::Checked as ComponentType>::Lower;

    const ABI: CanonicalAbiInfo = <T::Checked as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <T::Checked as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: every read is of the bytes wasmtime gives and of the memory slice it lends
// (`LiftContext::memory`), bounds checked; nothing is written.
#[allow(unsafe_code, reason = "wasmtime's Lift is an unsafe trait")]
unsafe impl<T: RequestAnswer> Lift for Answer<T> {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        // Never taken for a function's result: a record of more than one value is returned
        // in memory.
        T::Checked::linear_lift_from_flat(cx, ty, src).map(|answer| Answer(answer.into()))
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        let generic = |cx: &mut LiftContext<'_>| {
            T::Checked::linear_lift_from_memory(cx, ty, bytes).map(|answer| Answer(answer.into()))
        };
        let Some(&case) = bytes.first() else {
            bail!("a request-answer out of the bytes given")
        };
        match case {
            0 if utf8(cx) => {}
            // `respond`, another encoding, or a case that does not exist (refused there).
            _ => return generic(cx),
        }
        // `request-answer`'s layout, as for `header-op` in `lift`.
        const {
            assert!(<T::Checked as ComponentType>::SIZE32 == ANSWER);
        }
        let at = |offset| word(bytes, offset).unwrap_or(0);
        let headers = lift(cx, at(4), at(8))?;
        let path = match bytes.get(12) {
            Some(0) => None,
            Some(1) => {
                let memory = cx.memory();
                Some(text(cx, memory, at(16) as usize, at(20) as usize)?)
            }
            _ => bail!("invalid option discriminant"),
        };
        let response = lift(cx, at(24), at(28))?;
        Ok(Answer(T::proceed(headers, path, response)))
    }
}

/// The plugin's strings are UTF-8 (the fast path reads them as such).
fn utf8(cx: &LiftContext<'_>) -> bool {
    matches!(
        cx.options().string_encoding,
        wasmtime::component::__internal::wasmtime_environ::component::StringEncoding::Utf8
    )
}

/// The `len` header changes at `ptr`.
fn lift<T: HeaderOp>(cx: &mut LiftContext<'_>, ptr: u32, len: u32) -> wasmtime::Result<Vec<T>> {
    let memory = cx.memory();
    let (ptr, len) = (ptr as usize, len as usize);
    let Some(elements) = len
        .checked_mul(ELEMENT)
        .and_then(|size| memory.get(ptr..ptr.checked_add(size)?))
    else {
        bail!("list pointer/length out of bounds of memory")
    };
    if !ptr.is_multiple_of(ALIGN) {
        bail!("list pointer is not aligned")
    }
    cx.consume_fuel_array(len, size_of::<T>())?;
    // The layout read below is `header-op`'s: an embedder's `T` of another size would have
    // been typed against another variant, and is refused when weir is built.
    const {
        assert!(T::SIZE32 == ELEMENT && T::ALIGN32 as usize == ALIGN);
    }
    let mut ops = Vec::with_capacity(len);
    for element in elements.as_chunks::<ELEMENT>().0 {
        let at = |offset| word(element, offset).map_or(0, |w| w as usize);
        // The case first, then the name, then the value, as the generic lift reads them: an
        // element of a case that does not exist is refused before its name is charged or
        // copied, and a malformed element fails with the generic lift's error.
        let op = match element[0] {
            0 => T::set(
                text(cx, memory, at(4), at(8))?,
                bytes(cx, memory, at(12), at(16))?,
            ),
            1 => T::append(
                text(cx, memory, at(4), at(8))?,
                bytes(cx, memory, at(12), at(16))?,
            ),
            2 => T::remove(text(cx, memory, at(4), at(8))?),
            _ => bail!("invalid variant discriminant"),
        };
        ops.push(op);
    }
    Ok(ops)
}

/// The little-endian `u32` at `offset` of `bytes`.
fn word(bytes: &[u8], offset: usize) -> Option<u32> {
    let word = bytes.get(offset..offset + 4)?;
    Some(u32::from_le_bytes(word.try_into().ok()?))
}

/// The `len` bytes at `ptr`, bounds checked and charged to the call's fuel.
fn slice<'m>(
    cx: &mut LiftContext<'_>,
    memory: &'m [u8],
    ptr: usize,
    len: usize,
    what: &str,
) -> wasmtime::Result<&'m [u8]> {
    let Some(bytes) = ptr.checked_add(len).and_then(|end| memory.get(ptr..end)) else {
        bail!("{what} pointer/length out of bounds of memory")
    };
    cx.consume_fuel(len)?;
    Ok(bytes)
}

/// A string: UTF-8, copied.
fn text(
    cx: &mut LiftContext<'_>,
    memory: &[u8],
    ptr: usize,
    len: usize,
) -> wasmtime::Result<String> {
    let bytes = slice(cx, memory, ptr, len, "string")?;
    Ok(std::str::from_utf8(bytes)?.to_owned())
}

/// A `list<u8>`, copied.
fn bytes(
    cx: &mut LiftContext<'_>,
    memory: &[u8],
    ptr: usize,
    len: usize,
) -> wasmtime::Result<Vec<u8>> {
    Ok(slice(cx, memory, ptr, len, "list")?.to_vec())
}

#[cfg(test)]
mod tests {
    use wasmtime::component::{Component, ComponentType, Instance, Lift, Linker};
    use wasmtime::{Engine, Store, StoreContextMut};

    use super::{Answer, HeaderOps};

    /// `header-op`, as an embedder's bindings generate it.
    #[derive(ComponentType, Lift, Debug, Clone, PartialEq, Eq)]
    #[component(variant)]
    enum Op {
        #[component(name = "set")]
        Set((String, Vec<u8>)),
        #[component(name = "append")]
        Append((String, Vec<u8>)),
        #[component(name = "remove")]
        Remove(String),
    }

    impl super::HeaderOp for Op {
        fn set(name: String, value: Vec<u8>) -> Op {
            Op::Set((name, value))
        }

        fn append(name: String, value: Vec<u8>) -> Op {
            Op::Append((name, value))
        }

        fn remove(name: String) -> Op {
            Op::Remove(name)
        }
    }

    /// A component whose `ops(n)` returns the n-th list of a table at address 0 (a pointer
    /// and a length each), and `answer(n)` the n-th `request-answer` of a table at 2048;
    /// `ops16` and `answer16` return the same, lifted with UTF-16 strings. Lists:
    ///
    /// - 0: a good list of three changes;
    /// - 1 to 6: one element each with a case that does not exist, a name past the end of
    ///   memory, a list past the end of memory, a list not aligned, a name that is not UTF-8,
    ///   and a value past the end of memory;
    /// - 7: 0x0ccc_cccd elements, whose 20 bytes each come to 2^32 + 4 (4 in 32 bits);
    /// - 8: 0x7fff_ffff elements;
    /// - 9 and 10: no elements, at the end of memory and 4 bytes past it;
    /// - 11 and 12: a name of 2^32 - 1 bytes, and a name at 2^32 - 16 of 32 bytes;
    /// - 13: a `remove` whose unused value words are 0xffff_ffff;
    /// - 14: 50 `set`s, each with the same 4,096-byte string (at 0x4000) as name and value;
    /// - 15: 100 elements of zeros (`set` of an empty name to an empty value);
    /// - 16: a case that does not exist, with a name past the end of memory;
    /// - 17: a value of 2^32 - 4 bytes.
    const COMPONENT: &str = r#"
    (component
      (core module $m
        (memory (export "memory") 1)
        (func (export "realloc") (param i32 i32 i32 i32) (result i32) unreachable)
        (func (export "ops") (param i32) (result i32)
          (i32.mul (local.get 0) (i32.const 8)))
        (func (export "answer") (param i32) (result i32)
          (i32.add (i32.const 2048) (i32.mul (local.get 0) (i32.const 32))))
        ;; the table: (pointer, length) for each n
        (data (i32.const 0)
          "\00\01\00\00" "\03\00\00\00"
          "\40\01\00\00" "\01\00\00\00"
          "\60\01\00\00" "\01\00\00\00"
          "\fa\ff\00\00" "\02\00\00\00"
          "\02\01\00\00" "\01\00\00\00"
          "\80\01\00\00" "\01\00\00\00"
          "\a0\01\00\00" "\01\00\00\00"
          "\00\01\00\00" "\cd\cc\cc\0c"
          "\00\01\00\00" "\ff\ff\ff\7f"
          "\00\00\01\00" "\00\00\00\00"
          "\04\00\01\00" "\00\00\00\00"
          "\c0\01\00\00" "\01\00\00\00"
          "\e0\01\00\00" "\01\00\00\00"
          "\00\02\00\00" "\01\00\00\00"
          "\00\20\00\00" "\32\00\00\00"
          "\00\10\00\00" "\64\00\00\00"
          "\20\02\00\00" "\01\00\00\00"
          "\40\02\00\00" "\01\00\00\00")
        ;; 256: set x-a: 1, append x-b: 22, remove x-c
        (data (i32.const 256)
          "\00\00\00\00" "\00\04\00\00" "\03\00\00\00" "\06\04\00\00" "\01\00\00\00"
          "\01\00\00\00" "\10\04\00\00" "\03\00\00\00" "\14\04\00\00" "\02\00\00\00"
          "\02\00\00\00" "\1a\04\00\00" "\03\00\00\00" "\00\00\00\00" "\00\00\00\00")
        ;; 320: case 3
        (data (i32.const 320)
          "\03\00\00\00" "\00\04\00\00" "\03\00\00\00" "\06\04\00\00" "\01\00\00\00")
        ;; 352: a name at 65535, 10 bytes long
        (data (i32.const 352)
          "\00\00\00\00" "\ff\ff\00\00" "\0a\00\00\00" "\06\04\00\00" "\01\00\00\00")
        ;; 384: remove a name that is not UTF-8
        (data (i32.const 384)
          "\02\00\00\00" "\24\04\00\00" "\02\00\00\00" "\00\00\00\00" "\00\00\00\00")
        ;; 416: set x-a to a value at 65530, 100 bytes long
        (data (i32.const 416)
          "\00\00\00\00" "\00\04\00\00" "\03\00\00\00" "\fa\ff\00\00" "\64\00\00\00")
        ;; 448: remove a name of 2^32 - 1 bytes
        (data (i32.const 448)
          "\02\00\00\00" "\00\04\00\00" "\ff\ff\ff\ff" "\00\00\00\00" "\00\00\00\00")
        ;; 480: set a name at 2^32 - 16, 32 bytes long
        (data (i32.const 480)
          "\00\00\00\00" "\f0\ff\ff\ff" "\20\00\00\00" "\06\04\00\00" "\01\00\00\00")
        ;; 512: remove x-c, the value words (unused) all ones
        (data (i32.const 512)
          "\02\00\00\00" "\1a\04\00\00" "\03\00\00\00" "\ff\ff\ff\ff" "\ff\ff\ff\ff")
        ;; 544: case 3 with a name past the end of memory
        (data (i32.const 544)
          "\03\00\00\00" "\ff\ff\ff\ff" "\01\00\00\00" "\00\00\00\00" "\00\00\00\00")
        ;; 576: set x-a to a value of 2^32 - 4 bytes
        (data (i32.const 576)
          "\00\00\00\00" "\00\04\00\00" "\03\00\00\00" "\06\04\00\00" "\fc\ff\ff\ff")
        (data (i32.const 1024) "x-a" "\00\00\00" "1")
        (data (i32.const 1040) "x-b" "\00" "22")
        (data (i32.const 1050) "x-c")
        (data (i32.const 1060) "\ff\fe")
        (data (i32.const 1070) "/p?q")
        ;; 2048 + 32 n: answer(n)
        (data (i32.const 2048)
          ;; 0: continue with the good list, path /p?q, the list's first change for the response
          "\00\00\00\00" "\00\01\00\00" "\03\00\00\00" "\01\00\00\00"
          "\2e\04\00\00" "\04\00\00\00" "\00\01\00\00" "\01\00\00\00"
          ;; 1: continue with nothing
          "\00\00\00\00" "\00\00\00\00" "\00\00\00\00" "\00\00\00\00"
          "\00\00\00\00" "\00\00\00\00" "\00\00\00\00" "\00\00\00\00"
          ;; 2: respond 418 with the body /p?q, and the list's first change for the response
          "\01\00\00\00" "\a2\01\00\00" "\00\00\00\00" "\00\00\00\00"
          "\2e\04\00\00" "\04\00\00\00" "\00\01\00\00" "\01\00\00\00"
          ;; 3: a case that does not exist
          "\02\00\00\00" "\00\00\00\00" "\00\00\00\00" "\00\00\00\00"
          "\00\00\00\00" "\00\00\00\00" "\00\00\00\00" "\00\00\00\00"
          ;; 4: a path whose option case does not exist
          "\00\00\00\00" "\00\00\00\00" "\00\00\00\00" "\02\00\00\00"
          "\2e\04\00\00" "\04\00\00\00" "\00\00\00\00" "\00\00\00\00"
          ;; 5: a path that is not UTF-8
          "\00\00\00\00" "\00\00\00\00" "\00\00\00\00" "\01\00\00\00"
          "\24\04\00\00" "\02\00\00\00" "\00\00\00\00" "\00\00\00\00"
          ;; 6: the response's list past the end of memory
          "\00\00\00\00" "\00\00\00\00" "\00\00\00\00" "\00\00\00\00"
          "\00\00\00\00" "\00\00\00\00" "\fa\ff\00\00" "\02\00\00\00"
          ;; 7: continue with list 14 twice, and the 4,096-byte string as the path
          "\00\00\00\00" "\00\20\00\00" "\32\00\00\00" "\01\00\00\00"
          "\00\40\00\00" "\00\10\00\00" "\00\20\00\00" "\32\00\00\00"
          ;; 8: the request's list of 0x7fff_ffff elements
          "\00\00\00\00" "\00\01\00\00" "\ff\ff\ff\7f" "\00\00\00\00"
          "\00\00\00\00" "\00\00\00\00" "\00\00\00\00" "\00\00\00\00"
          ;; 9: a path at 2^32 - 1
          "\00\00\00\00" "\00\00\00\00" "\00\00\00\00" "\01\00\00\00"
          "\ff\ff\ff\ff" "\01\00\00\00" "\00\00\00\00" "\00\00\00\00"
          ;; 10: no path, its (unused) words all ones
          "\00\00\00\00" "\00\00\00\00" "\00\00\00\00" "\00\00\00\00"
          "\ff\ff\ff\ff" "\ff\ff\ff\ff" "\00\00\00\00" "\00\00\00\00"
          ;; 11: respond with a body past the end of memory
          "\01\00\00\00" "\a2\01\00\00" "\00\00\00\00" "\00\00\00\00"
          "\00\00\ff\ff" "\00\00\01\00" "\00\00\00\00" "\00\00\00\00"
          ;; 12: respond, with a response change whose name is not UTF-8
          "\01\00\00\00" "\a2\01\00\00" "\00\00\00\00" "\00\00\00\00"
          "\00\00\00\00" "\00\00\00\00" "\80\01\00\00" "\01\00\00\00"
          ;; 13: case 255
          "\ff\00\00\00" "\00\00\00\00" "\00\00\00\00" "\00\00\00\00"
          "\00\00\00\00" "\00\00\00\00" "\00\00\00\00" "\00\00\00\00"
          ;; 14: the response's list of 0x0ccc_cccd elements
          "\00\00\00\00" "\00\00\00\00" "\00\00\00\00" "\00\00\00\00"
          "\00\00\00\00" "\00\00\00\00" "\00\01\00\00" "\cd\cc\cc\0c")
        ;; 8192: list 14, 50 times `set` with the 4,096 bytes at 0x4000 as name and value
        (; fill ;))
      (core instance $i (instantiate $m))
      (type $op (variant
        (case "set" (tuple string (list u8)))
        (case "append" (tuple string (list u8)))
        (case "remove" string)))
      (export $op-export "header-op" (type $op))
      (func (export "ops") (param "n" u32) (result (list $op-export))
        (canon lift (core func $i "ops") (memory (core memory $i "memory"))
          (realloc (core func $i "realloc"))))
      (func (export "ops16") (param "n" u32) (result (list $op-export))
        (canon lift (core func $i "ops") string-encoding=utf16
          (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
      (type $changes (record (field "headers" (list $op-export)) (field "path" (option string))))
      (export $changes-export "request-changes" (type $changes))
      (type $reply (record
        (field "status" u16)
        (field "headers" (list (tuple string (list u8))))
        (field "body" (list u8))))
      (export $reply-export "local-response" (type $reply))
      (type $action (variant
        (case "continue" $changes-export)
        (case "respond" $reply-export)))
      (export $action-export "request-action" (type $action))
      (type $answer (record
        (field "action" $action-export)
        (field "response-headers" (list $op-export))))
      (export $answer-export "request-answer" (type $answer))
      (func (export "answer") (param "n" u32) (result $answer-export)
        (canon lift (core func $i "answer") (memory (core memory $i "memory"))
          (realloc (core func $i "realloc"))))
      (func (export "answer16") (param "n" u32) (result $answer-export)
        (canon lift (core func $i "answer") string-encoding=utf16
          (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))
    "#;

    /// List 14: 50 `set`s of the 4,096 bytes at 0x4000 as name and value.
    const SHARED: u32 = 14;
    /// List 15: 100 elements of zeros.
    const ZEROS: u32 = 15;
    /// Answer 7: list 14 for the request and the response, the 4,096 bytes as the path.
    const SHARED_ANSWER: u32 = 7;
    /// How many lists and answers the tables hold.
    const LISTS: u32 = 18;
    const ANSWERS: u32 = 15;

    /// The component, with list 14 filled in.
    fn component(engine: &Engine) -> Component {
        let element =
            r#""\00\00\00\00" "\00\40\00\00" "\00\10\00\00" "\00\40\00\00" "\00\10\00\00" "#;
        let fill = format!("(data (i32.const 8192) {})", element.repeat(50));
        let text = COMPONENT.replace("(; fill ;)", &fill);
        let bytes = wat::parse_str(text).expect("the component's text");
        Component::new(engine, bytes).expect("the component")
    }

    /// An instance of the component, in a store with `fuel` for each call's lifting (the
    /// default if `None`).
    fn instance(fuel: Option<usize>) -> (Store<()>, Instance) {
        let engine = Engine::default();
        let component = component(&engine);
        let mut store = Store::new(&engine, ());
        if let Some(fuel) = fuel {
            store.set_hostcall_fuel(fuel);
        }
        let instance = Linker::new(&engine)
            .instantiate(&mut store, &component)
            .expect("an instance");
        (store, instance)
    }

    /// What export `name` answers for `n`, lifted as `Fast` (this crate's) and as `Generic`
    /// (wasmtime's generic lift), with `fuel` for each.
    fn lifted<Fast, Generic>(
        name: &str,
        n: u32,
        fuel: Option<usize>,
    ) -> (wasmtime::Result<Fast>, wasmtime::Result<Generic>)
    where
        Fast: ComponentType + Lift,
        Generic: ComponentType + Lift,
    {
        let (mut store, instance) = instance(fuel);
        let fast = instance
            .get_typed_func::<(u32,), (Fast,)>(&mut store, name)
            .expect("typed as the export's result");
        let fast = fast.call(&mut store, (n,)).map(|(value,)| value);
        let generic = instance
            .get_typed_func::<(u32,), (Generic,)>(&mut store, name)
            .expect("typed as the export's result");
        (fast, generic.call(&mut store, (n,)).map(|(value,)| value))
    }

    /// What export `name` (`ops` or `ops16`) answers for `n`, lifted by [`HeaderOps`] and by
    /// wasmtime's generic lift, with `fuel` for each.
    fn lists(
        name: &str,
        n: u32,
        fuel: Option<usize>,
    ) -> (wasmtime::Result<Vec<Op>>, wasmtime::Result<Vec<Op>>) {
        let (fast, generic) = lifted::<HeaderOps<Op>, Vec<Op>>(name, n, fuel);
        (fast.map(|ops| ops.0), generic)
    }

    /// `ops(n)`, lifted both ways.
    fn both(n: u32) -> (wasmtime::Result<Vec<Op>>, wasmtime::Result<Vec<Op>>) {
        lists("ops", n, None)
    }

    /// Both lifts agree: the same value, or both refused (with the same error, `exact`).
    fn agree<T: PartialEq + std::fmt::Debug>(
        what: &str,
        fast: wasmtime::Result<T>,
        generic: wasmtime::Result<T>,
        exact: bool,
    ) {
        match (fast, generic) {
            (Ok(fast), Ok(generic)) => assert_eq!(fast, generic, "{what}"),
            (Err(fast), Err(generic)) if exact => {
                assert_eq!(format!("{fast:#}"), format!("{generic:#}"), "{what}");
            }
            (Err(_), Err(_)) => {}
            (fast, generic) => panic!("{what}: the lifts disagree: {fast:?} and {generic:?}"),
        }
    }

    #[test]
    fn a_list_is_lifted_as_the_generic_lift_lifts_it() {
        let (fast, generic) = both(0);
        let expected = vec![
            Op::Set(("x-a".into(), b"1".to_vec())),
            Op::Append(("x-b".into(), b"22".to_vec())),
            Op::Remove("x-c".into()),
        ];
        assert_eq!(fast.expect("lifted"), expected);
        assert_eq!(generic.expect("lifted"), expected);
    }

    #[test]
    fn a_malformed_list_fails_where_the_generic_lift_fails() {
        for (n, what) in [
            (1, "invalid variant discriminant"),
            (2, "string pointer/length out of bounds of memory"),
            (3, "list pointer/length out of bounds of memory"),
            (4, "list pointer is not aligned"),
            (5, "invalid utf-8"),
            (6, "list pointer/length out of bounds of memory"),
            (7, "list pointer/length out of bounds of memory"),
            (8, "list pointer/length out of bounds of memory"),
            (10, "list pointer/length out of bounds of memory"),
            (11, "string pointer/length out of bounds of memory"),
            (12, "string pointer/length out of bounds of memory"),
            (16, "invalid variant discriminant"),
            (17, "list pointer/length out of bounds of memory"),
        ] {
            let (fast, generic) = both(n);
            let fast = fast.expect_err("refused");
            assert!(
                format!("{fast:#}").contains(what),
                "ops({n}): {fast:#}, not {what}"
            );
            assert!(generic.is_err(), "ops({n}): the generic lift took it");
        }
    }

    #[test]
    fn every_list_is_lifted_as_the_generic_lift_lifts_it_in_either_encoding() {
        // Strings in UTF-16 are read by the generic lift: read as UTF-8 they would be other
        // strings (`x-a` is the UTF-16 `\u{2d78}a\0`).
        for name in ["ops", "ops16"] {
            for n in 0..LISTS {
                let (fast, generic) = lists(name, n, None);
                agree(&format!("{name}({n})"), fast, generic, false);
            }
        }
        let (fast, _) = lists("ops16", 0, None);
        assert_ne!(
            fast.expect("lifted")[0],
            Op::Set(("x-a".into(), b"1".to_vec())),
            "UTF-16 read as UTF-8"
        );
    }

    #[test]
    fn edge_lists_are_lifted_as_the_generic_lift_lifts_them() {
        // No elements at the very end of memory; a `remove` whose unused words are garbage.
        assert_eq!(both(9).0.expect("lifted"), Vec::new());
        assert_eq!(both(13).0.expect("lifted"), vec![Op::Remove("x-c".into())]);
        let shared = both(SHARED).0.expect("lifted");
        assert_eq!(shared.len(), 50);
        assert_eq!(shared[49], Op::Set(("\0".repeat(4096), vec![0; 4096])));
    }

    /// The host-call fuel the generic lift of `ops(n)` takes, found by bisection: the least
    /// with which it succeeds.
    fn generic_fuel(n: u32) -> usize {
        let (mut low, mut high) = (0, 1 << 20);
        while low < high {
            let mid = usize::midpoint(low, high);
            match lists("ops", n, Some(mid)).1 {
                Ok(_) => high = mid,
                Err(_) => low = mid + 1,
            }
        }
        low
    }

    #[test]
    fn a_list_takes_the_fuel_the_generic_lift_takes_before_it_is_copied() {
        // 100 empty elements (the list's own fuel), and 50 elements that each point at the
        // same 4,096 bytes twice (the strings' fuel: what a plugin can make the host copy
        // with little memory of its own).
        for n in [ZEROS, SHARED] {
            let fuel = generic_fuel(n);
            assert!(fuel > 0);
            let (fast, generic) = lists("ops", n, Some(fuel));
            agree(&format!("ops({n}) with {fuel}"), fast, generic, true);
            let (fast, generic) = lists("ops", n, Some(fuel - 1));
            let fast = fast.expect_err("out of fuel");
            assert!(generic.is_err());
            assert!(format!("{fast:#}").contains("fuel"), "ops({n}): {fast:#}");
        }
        let op = size_of::<Op>();
        assert_eq!(generic_fuel(ZEROS), 100 * op);
        assert_eq!(generic_fuel(SHARED), 50 * (op + 2 * 4096));
    }

    /// `request-changes`, `local-response`, `request-action` and `request-answer`, as an
    /// embedder's bindings generate them.
    #[derive(ComponentType, Lift, Debug, Clone, PartialEq, Eq)]
    #[component(record)]
    struct Changes {
        headers: Vec<Op>,
        path: Option<String>,
    }

    #[derive(ComponentType, Lift, Debug, Clone, PartialEq, Eq)]
    #[component(record)]
    struct Reply {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    }

    #[derive(ComponentType, Lift, Debug, Clone, PartialEq, Eq)]
    #[component(variant)]
    enum Action {
        #[component(name = "continue")]
        Continue(Changes),
        #[component(name = "respond")]
        Respond(Reply),
    }

    #[derive(ComponentType, Lift, Debug, Clone, PartialEq, Eq)]
    #[component(record)]
    struct Checked {
        action: Action,
        #[component(name = "response-headers")]
        response_headers: Vec<Op>,
    }

    impl super::RequestAnswer for Checked {
        type Checked = Checked;
        type Op = Op;

        fn proceed(headers: Vec<Op>, path: Option<String>, response: Vec<Op>) -> Checked {
            Checked {
                action: Action::Continue(Changes { headers, path }),
                response_headers: response,
            }
        }
    }

    /// What export `name` (`answer` or `answer16`) answers for `n`, lifted by [`Answer`]
    /// and by wasmtime's generic lift, with `fuel` for each.
    fn answers_in(
        name: &str,
        n: u32,
        fuel: Option<usize>,
    ) -> (wasmtime::Result<Checked>, wasmtime::Result<Checked>) {
        let (fast, generic) = lifted::<Answer<Checked>, Checked>(name, n, fuel);
        (fast.map(|answer| answer.0), generic)
    }

    /// `answer(n)`, lifted both ways.
    fn answers(n: u32) -> (wasmtime::Result<Checked>, wasmtime::Result<Checked>) {
        answers_in("answer", n, None)
    }

    #[test]
    fn an_answer_is_lifted_as_the_generic_lift_lifts_it() {
        let set = Op::Set(("x-a".into(), b"1".to_vec()));
        let proceed = Checked {
            action: Action::Continue(Changes {
                headers: vec![
                    set.clone(),
                    Op::Append(("x-b".into(), b"22".to_vec())),
                    Op::Remove("x-c".into()),
                ],
                path: Some("/p?q".into()),
            }),
            response_headers: vec![set.clone()],
        };
        let nothing = Checked {
            action: Action::Continue(Changes {
                headers: Vec::new(),
                path: None,
            }),
            response_headers: Vec::new(),
        };
        let respond = Checked {
            action: Action::Respond(Reply {
                status: 418,
                headers: Vec::new(),
                body: b"/p?q".to_vec(),
            }),
            response_headers: vec![set],
        };
        for (n, expected) in [
            (0, proceed),
            (1, nothing.clone()),
            (2, respond),
            (10, nothing),
        ] {
            let (fast, generic) = answers(n);
            assert_eq!(fast.expect("lifted"), expected, "answer({n})");
            assert_eq!(generic.expect("lifted"), expected, "answer({n})");
        }
    }

    #[test]
    fn a_malformed_answer_fails_where_the_generic_lift_fails() {
        for (n, what) in [
            (3, "discriminant"),
            (4, "invalid option discriminant"),
            (5, "invalid utf-8"),
            (6, "list pointer/length out of bounds of memory"),
            (8, "list pointer/length out of bounds of memory"),
            (9, "string pointer/length out of bounds of memory"),
            (11, "list pointer/length out of bounds of memory"),
            (12, "invalid utf-8"),
            (13, "discriminant"),
            (14, "list pointer/length out of bounds of memory"),
        ] {
            let (fast, generic) = answers(n);
            let fast = fast.expect_err("refused");
            assert!(
                format!("{fast:#}").contains(what),
                "answer({n}): {fast:#}, not {what}"
            );
            assert!(generic.is_err(), "answer({n}): the generic lift took it");
        }
    }

    #[test]
    fn every_answer_is_lifted_as_the_generic_lift_lifts_it_in_either_encoding() {
        for name in ["answer", "answer16"] {
            for n in 0..ANSWERS {
                let (fast, generic) = answers_in(name, n, None);
                agree(&format!("{name}({n})"), fast, generic, false);
            }
        }
    }

    #[test]
    fn an_answer_takes_the_fuel_the_generic_lift_takes_for_all_its_parts() {
        // Both lists and the path are charged to one call's fuel.
        let need = 2 * 50 * (size_of::<Op>() + 2 * 4096) + 4096;
        let (fast, generic) = answers_in("answer", SHARED_ANSWER, Some(need));
        agree("answer with enough fuel", fast, generic, true);
        let (fast, generic) = answers_in("answer", SHARED_ANSWER, Some(need - 1));
        let fast = fast.expect_err("out of fuel");
        assert!(format!("{fast:#}").contains("fuel"), "{fast:#}");
        assert!(generic.is_err(), "the generic lift took it with less fuel");
    }

    /// A component that passes a `list<header-op>` to the host (`take`): `run(ptr, len)`
    /// calls it with that pointer and length, `run16` with strings in UTF-16, so the host
    /// lifts the list from its flat form. Memory holds, at 256, `set x-a: 1` and
    /// `remove x-c`.
    const IMPORTER: &str = r#"
    (component
      (type $op' (variant
        (case "set" (tuple string (list u8)))
        (case "append" (tuple string (list u8)))
        (case "remove" string)))
      (import "header-op" (type $op (eq $op')))
      (import "take" (func $take (param "ops" (list $op))))
      (core module $m
        (memory (export "memory") 1)
        (data (i32.const 256)
          "\00\00\00\00" "\00\04\00\00" "\03\00\00\00" "\06\04\00\00" "\01\00\00\00"
          "\02\00\00\00" "\1a\04\00\00" "\03\00\00\00" "\00\00\00\00" "\00\00\00\00")
        (data (i32.const 1024) "x-a" "\00\00\00" "1")
        (data (i32.const 1050) "x-c"))
      (core instance $i (instantiate $m))
      (core func $take8 (canon lower (func $take) (memory (core memory $i "memory"))))
      (core func $take16 (canon lower (func $take) string-encoding=utf16
        (memory (core memory $i "memory"))))
      (core module $run
        (import "host" "take8" (func $take8 (param i32 i32)))
        (import "host" "take16" (func $take16 (param i32 i32)))
        (func (export "run") (param i32 i32) (call $take8 (local.get 0) (local.get 1)))
        (func (export "run16") (param i32 i32) (call $take16 (local.get 0) (local.get 1))))
      (core instance $r (instantiate $run
        (with "host" (instance (export "take8" (func $take8)) (export "take16" (func $take16))))))
      (func (export "run") (param "ptr" u32) (param "len" u32) (canon lift (core func $r "run")))
      (func (export "run16") (param "ptr" u32) (param "len" u32)
        (canon lift (core func $r "run16"))))
    "#;

    /// What the host's `take` is given when the importer's `name` passes `(ptr, len)`,
    /// lifted by [`HeaderOps`] and by wasmtime's generic lift.
    fn taken(
        name: &str,
        ptr: u32,
        len: u32,
    ) -> (wasmtime::Result<Vec<Op>>, wasmtime::Result<Vec<Op>>) {
        let engine = Engine::default();
        let bytes = wat::parse_str(IMPORTER).expect("the component's text");
        let component = Component::new(&engine, bytes).expect("the component");
        let mut fast = Linker::new(&engine);
        fast.root()
            .func_wrap(
                "take",
                |mut store: StoreContextMut<'_, Vec<Op>>, (ops,): (HeaderOps<Op>,)| {
                    *store.data_mut() = ops.0;
                    Ok(())
                },
            )
            .expect("defined");
        let mut generic = Linker::new(&engine);
        generic
            .root()
            .func_wrap(
                "take",
                |mut store: StoreContextMut<'_, Vec<Op>>, (ops,): (Vec<Op>,)| {
                    *store.data_mut() = ops;
                    Ok(())
                },
            )
            .expect("defined");
        let [fast, generic] = [fast, generic].map(|linker| {
            let mut store = Store::new(&engine, Vec::new());
            let instance = linker
                .instantiate(&mut store, &component)
                .expect("an instance");
            let run = instance
                .get_typed_func::<(u32, u32), ()>(&mut store, name)
                .expect("typed");
            run.call(&mut store, (ptr, len))
                .map(|()| std::mem::take(store.data_mut()))
        });
        (fast, generic)
    }

    #[test]
    fn a_list_passed_to_the_host_is_lifted_as_the_generic_lift_lifts_it() {
        let (fast, generic) = taken("run", 256, 2);
        let expected = vec![
            Op::Set(("x-a".into(), b"1".to_vec())),
            Op::Remove("x-c".into()),
        ];
        assert_eq!(fast.expect("lifted"), expected);
        assert_eq!(generic.expect("lifted"), expected);
        for (ptr, len) in [
            (256, 0x0ccc_cccd),
            (256, 0x7fff_ffff),
            (256, u32::MAX),
            (0x1_0000, 0),
            (0x1_0004, 0),
            (258, 1),
            (u32::MAX, u32::MAX),
        ] {
            for name in ["run", "run16"] {
                let (fast, generic) = taken(name, ptr, len);
                agree(&format!("{name}({ptr:#x}, {len:#x})"), fast, generic, false);
            }
        }
        let (fast, generic) = taken("run16", 256, 2);
        let fast = fast.expect("lifted");
        assert_eq!(fast, generic.expect("lifted"));
        assert_ne!(fast, expected, "UTF-16 read as UTF-8");
    }

    #[test]
    fn a_type_that_is_not_a_list_of_header_changes_is_refused() {
        let (mut store, instance) = instance(None);
        let mistyped = instance.get_typed_func::<(u32,), (HeaderOps<Mistyped>,)>(&mut store, "ops");
        assert!(mistyped.is_err(), "a variant of other cases was taken");
    }

    /// A variant whose cases are in another order than `header-op`'s.
    #[derive(ComponentType, Lift, Debug)]
    #[expect(dead_code, reason = "never lifted: its type is refused")]
    #[component(variant)]
    enum Mistyped {
        #[component(name = "append")]
        Append((String, Vec<u8>)),
        #[component(name = "set")]
        Set((String, Vec<u8>)),
        #[component(name = "remove")]
        Remove(String),
    }

    impl super::HeaderOp for Mistyped {
        fn set(name: String, value: Vec<u8>) -> Mistyped {
            Mistyped::Set((name, value))
        }

        fn append(name: String, value: Vec<u8>) -> Mistyped {
            Mistyped::Append((name, value))
        }

        fn remove(name: String) -> Mistyped {
            Mistyped::Remove(name)
        }
    }
}
