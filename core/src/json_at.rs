//! Reading only what JSON pointers need from a document (answers of a model): a
//! parse that keeps the subtrees at the given pointers and drops everything else
//! without building it, and a pointer lookup that allocates nothing for pointers
//! without `~` escapes. The filter checks every compared or health-checked answer
//! with these (issue 13: a full `serde_json::Value` of each answer, and
//! `Value::pointer`'s two `String`s per token, were most of the shadow path's Wasm
//! time). At every given pointer the pruned document holds exactly what the full
//! one holds; array elements before a kept one become `null` so indexes still hold.

use std::borrow::Cow;
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

/// The value at `pointer` (RFC 6901), as `Value::pointer` finds it, without
/// allocating unless a token carries a `~` escape.
pub fn at<'v>(v: &'v Value, pointer: &str) -> Option<&'v Value> {
    let mut cur = v;
    for t in tokens(pointer)? {
        cur = match cur {
            Value::Object(m) => m.get(t.as_ref())?,
            Value::Array(a) => a.get(index(&t)?)?,
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
