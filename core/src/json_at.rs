//! Reading only what JSON pointers need from a document (answers of a model): one
//! pass that builds just the values at the given pointers (`values_at`, what the
//! filter checks every compared or health-checked answer with), a parse that keeps
//! the subtrees at the pointers and drops everything else without building it
//! (`parse_at`), and a pointer lookup that allocates nothing for pointers without
//! `~` escapes (issue 13: a full `serde_json::Value` of each answer, and
//! `Value::pointer`'s two `String`s per token, were most of the shadow path's Wasm
//! time; then the pruned document's maps and keys). At every given pointer both
//! find exactly what the full document holds; in a pruned document array elements
//! before a kept one become `null` so indexes still hold.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Parses `body`, keeping only the subtrees at `pointers` (RFC 6901). `None`: not
/// JSON. A pointer that does not start with `/` (other than `""`, the whole
/// document) keeps nothing.
pub fn parse_at(body: &[u8], pointers: &[&str]) -> Option<Value> {
    let paths: Vec<Vec<Cow<'_, str>>> = pointers.iter().filter_map(|p| tokens(p)).collect();
    let refs: Vec<&[Cow<'_, str>]> = paths.iter().map(Vec::as_slice).collect();
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = Pruned(&refs).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(v)
}

/// The values at `pointers` in `body`, one per pointer in order (`None`: nothing
/// there, or the pointer is not valid), as `Value::pointer` finds them in the whole
/// document. One pass that builds only those values (no pruned document). `None`:
/// not JSON.
pub fn values_at(body: &[u8], pointers: &[&str]) -> Option<Vec<Option<Value>>> {
    let paths: Vec<Option<Vec<Cow<'_, str>>>> = pointers.iter().map(|p| tokens(p)).collect();
    if paths.len() > 64 {
        let v = parse_at(body, pointers)?;
        return Some(pointers.iter().map(|p| at(&v, p).cloned()).collect());
    }
    let live = paths
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_some())
        .fold(0u64, |acc, (i, _)| acc | (1u64 << i));
    let refs: Vec<&[Cow<'_, str>]> = paths.iter().map(|p| p.as_deref().unwrap_or(&[])).collect();
    let out = RefCell::new(vec![None; refs.len()]);
    let mut de = serde_json::Deserializer::from_slice(body);
    Slots {
        at: Live {
            paths: &refs,
            live,
            depth: 0,
        },
        out: &out,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(out.into_inner())
}

/// The value at `pointer` (RFC 6901), as `Value::pointer` finds it, without
/// allocating unless a token carries a `~` escape.
pub fn at<'v>(v: &'v Value, pointer: &str) -> Option<&'v Value> {
    at_tokens(v, &tokens(pointer)?)
}

/// The value at the unescaped tokens of a pointer.
fn at_tokens<'v>(v: &'v Value, tokens: &[Cow<'_, str>]) -> Option<&'v Value> {
    let mut cur = v;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get(t.as_ref())?,
            Value::Array(a) => a.get(index(t)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// The unescaped tokens of a pointer; `None` when it is neither `""` nor starts with `/`.
fn tokens(pointer: &str) -> Option<Vec<Cow<'_, str>>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| {
                if t.contains('~') {
                    Cow::Owned(t.replace("~1", "/").replace("~0", "~"))
                } else {
                    Cow::Borrowed(t)
                }
            })
            .collect(),
    )
}

/// An array index token, by serde_json's rule (no sign, no leading zero).
fn index(t: &str) -> Option<usize> {
    if t.starts_with('+') || (t.starts_with('0') && t.len() != 1) {
        return None;
    }
    t.parse().ok()
}

/// The rest of each pointer still being followed at this point of the document.
struct Pruned<'p, 't>(&'p [&'p [Cow<'t, str>]]);

impl<'de> DeserializeSeed<'de> for Pruned<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0.iter().any(|p| p.is_empty()) {
            // A pointer ends here: keep the whole subtree.
            return Value::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pruned<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, _v: &str) -> Result<Value, E> {
        // Pointers go on below a string: they find nothing.
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let last = self.0.iter().filter_map(|p| index(p.first()?)).max();
        let mut out = Vec::new();
        let mut i = 0usize;
        loop {
            let here: Vec<&[Cow<'_, str>]> = self
                .0
                .iter()
                .filter(|p| p.first().and_then(|t| index(t)) == Some(i))
                .filter_map(|p| p.get(1..))
                .collect();
            if here.is_empty() {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                if last.is_some_and(|l| i < l) {
                    out.push(Value::Null);
                }
            } else {
                match seq.next_element_seed(Pruned(&here))? {
                    Some(v) => out.push(v),
                    None => break,
                }
            }
            i = i.saturating_add(1);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let here: Vec<&[Cow<'_, str>]> = self
                .0
                .iter()
                .filter(|p| p.first().is_some_and(|t| t.as_ref() == key.as_ref()))
                .filter_map(|p| p.get(1..))
                .collect();
            if here.is_empty() {
                map.next_value::<IgnoredAny>()?;
            } else {
                let v = map.next_value_seed(Pruned(&here))?;
                out.insert(key.into_owned(), v);
            }
        }
        Ok(Value::Object(out))
    }
}

/// The pointers still followed at a point of the document, as bits of `live`
/// (bit i: `paths[i]`), each matched up to `depth` tokens: no list per level.
#[derive(Clone, Copy)]
struct Live<'p, 't> {
    paths: &'p [&'p [Cow<'t, str>]],
    live: u64,
    depth: usize,
}

impl<'p, 't> Live<'p, 't> {
    /// The live pointers with their token at this depth.
    fn next_tokens(self) -> impl Iterator<Item = (u64, &'p Cow<'t, str>)> {
        self.paths
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.live & (1u64 << i) != 0)
            .filter_map(move |(i, p)| Some((1u64 << i, p.get(self.depth)?)))
    }

    /// The live pointers whose token here matches `hit`, one level down.
    fn below(self, hit: impl Fn(&str) -> bool) -> Live<'p, 't> {
        let live = self
            .next_tokens()
            .filter(|(_, t)| hit(t))
            .fold(0, |acc, (bit, _)| acc | bit);
        Live {
            live,
            depth: self.depth + 1,
            ..self
        }
    }
}

/// Writes the values the live pointers find into `out` (slot i: `paths[i]`),
/// building nothing else.
struct Slots<'p, 't, 'o> {
    at: Live<'p, 't>,
    out: &'o RefCell<Vec<Option<Value>>>,
}

impl<'p, 't, 'o> Slots<'p, 't, 'o> {
    fn below(&self, hit: impl Fn(&str) -> bool) -> Slots<'p, 't, 'o> {
        Slots {
            at: self.at.below(hit),
            out: self.out,
        }
    }

    /// Forgets what the live pointers found so far: a later duplicate key holds
    /// what the document holds (the last one wins, as in a whole parse).
    fn clear(&self) {
        let mut out = self.out.borrow_mut();
        for (i, slot) in out.iter_mut().enumerate().take(64) {
            if self.at.live & (1u64 << i) != 0 {
                *slot = None;
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Slots<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let Live { paths, live, depth } = self.at;
        let ends_here = paths
            .iter()
            .enumerate()
            .any(|(i, p)| live & (1u64 << i) != 0 && p.len() == depth);
        if !ends_here {
            return d.deserialize_any(self);
        }
        // A pointer ends here: this subtree is a value asked for; the pointers
        // that go on below it are looked up in it.
        let v = Value::deserialize(d)?;
        let mut out = self.out.borrow_mut();
        for (i, (slot, p)) in out.iter_mut().zip(paths.iter()).enumerate().take(64) {
            if live & (1u64 << i) != 0 {
                *slot = p.get(depth..).and_then(|rest| at_tokens(&v, rest)).cloned();
            }
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Slots<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // Pointers that go on below a scalar find nothing.
    fn visit_bool<E>(self, _v: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _v: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _v: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _v: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _v: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let here = self.below(|t| index(t) == Some(i));
            let more = if here.at.live == 0 {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(here)?.is_some()
            };
            if !more {
                return Ok(());
            }
            i = i.saturating_add(1);
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(Key)? {
            let here = self.below(|t| t == key.as_ref());
            if here.at.live == 0 {
                map.next_value::<IgnoredAny>()?;
            } else {
                here.clear();
                map.next_value_seed(here)?;
            }
        }
        Ok(())
    }
}

/// An object key, borrowed from the document when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"model_name":"m","id":"x","a/b":{"~k":[1,2]},
        "outputs":[{"name":"s","data":[0.25,"NaN",null]},{"name":"t","data":{"p":[true]}}],
        "label":"cat","n":-3,"big":18446744073709551615,"f":1.5e3,"esc":"\"q\""}"#;

    const POINTERS: [&str; 14] = [
        "/outputs/0/data",
        "/outputs/1/data/p/0",
        "/outputs/1/name",
        "/outputs/2/data",
        "/outputs/01/data",
        "/label",
        "/n",
        "/big",
        "/f",
        "/esc",
        "/a~1b/~0k/1",
        "/missing",
        "/label/0",
        "",
    ];

    #[test]
    fn pruned_documents_hold_what_the_full_one_holds_at_every_pointer() {
        let full: Value = serde_json::from_str(DOC).unwrap();
        for p in POINTERS {
            let pruned = parse_at(DOC.as_bytes(), &[p]).unwrap();
            assert_eq!(at(&pruned, p), full.pointer(p), "{p}");
            assert_eq!(at(&full, p), full.pointer(p), "{p}");
        }
        let all = parse_at(DOC.as_bytes(), &POINTERS).unwrap();
        for p in POINTERS {
            assert_eq!(at(&all, p), full.pointer(p), "{p} among all");
        }
    }

    #[test]
    fn values_at_find_what_the_whole_document_holds() {
        let full: Value = serde_json::from_str(DOC).unwrap();
        let found = values_at(DOC.as_bytes(), &POINTERS).unwrap();
        for (p, v) in POINTERS.iter().zip(&found) {
            assert_eq!(v.as_ref(), full.pointer(p), "{p}");
        }
        // one at a time, nested in each other, repeated, and past 64 pointers
        for p in POINTERS {
            assert_eq!(
                values_at(DOC.as_bytes(), &[p]).unwrap()[0].as_ref(),
                full.pointer(p),
                "{p}"
            );
        }
        let nested = [
            "/outputs",
            "/outputs/1/data/p",
            "/outputs/1/data/p/0",
            "/outputs",
            "nope",
        ];
        let found = values_at(DOC.as_bytes(), &nested).unwrap();
        for (p, v) in nested.iter().zip(&found) {
            assert_eq!(v.as_ref(), full.pointer(p), "{p} nested");
        }
        let many: Vec<&str> = POINTERS.iter().copied().cycle().take(70).collect();
        let found = values_at(DOC.as_bytes(), &many).unwrap();
        for (p, v) in many.iter().zip(&found) {
            assert_eq!(v.as_ref(), full.pointer(p), "{p} among 70");
        }
        // a later duplicate key holds what the document holds
        let dup = br#"{"a":{"b":1},"a":{"c":2}}"#;
        let whole: Value = serde_json::from_slice(dup).unwrap();
        assert_eq!(
            values_at(dup, &["/a/b", "/a/c"]).unwrap(),
            vec![None, Some(2.into())]
        );
        assert_eq!(whole.pointer("/a/b"), None);
        assert_eq!(values_at(b"{\"a\": NaN}", &["/a"]), None);
        assert_eq!(values_at(b"[1] x", &["/0"]), None);
    }

    #[test]
    fn everything_else_is_dropped() {
        let pruned = parse_at(DOC.as_bytes(), &["/outputs/1/name"]).unwrap();
        assert_eq!(
            pruned,
            serde_json::json!({"outputs": [null, {"name": "t"}]})
        );
        assert_eq!(
            parse_at(DOC.as_bytes(), &[]).unwrap(),
            serde_json::json!({})
        );
        assert_eq!(
            parse_at(DOC.as_bytes(), &["nope"]).unwrap(),
            serde_json::json!({})
        );
    }

    #[test]
    fn not_json_is_none() {
        assert_eq!(parse_at(b"{\"a\": NaN}", &["/a"]), None);
        assert_eq!(parse_at(b"{\"a\": 1} trailing", &["/a"]), None);
        assert_eq!(parse_at(b"", &["/a"]), None);
    }
}
