//! Strict JSON, checked independently of the gateway's parser: the grammar,
//! and every string (keys included) decodes to Unicode text. Numbers are only
//! checked for syntax: JSON puts no limit on their size.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// An object's entries in order, repeats included.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn walk(raw: &RawValue) -> bool {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text).is_ok(),
        Some(b'[') => serde_json::from_str::<Vec<&RawValue>>(text)
            .is_ok_and(|items| items.into_iter().all(walk)),
        Some(b'{') => serde_json::from_str::<Entries>(text)
            .is_ok_and(|entries| entries.0.into_iter().all(|(_, v)| walk(v))),
        _ => true,
    }
}

pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<&RawValue>(bytes).is_ok_and(walk)
}
