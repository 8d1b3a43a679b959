//! Settings from the namespaced environment: `SENTINEL_<STEP>_<KEY>`, read
//! into a `#[derive(Deserialize)]` type. Values are strings; numbers and
//! booleans are parsed on demand.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer, MapAccess, Visitor};

/// A setting is missing or malformed.
#[derive(Debug)]
pub struct SettingsError(String);

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

impl de::Error for SettingsError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
    fn missing_field(field: &'static str) -> Self {
        Self(format!("missing setting `{field}`"))
    }
}

fn prefix(step: &str) -> String {
    format!("SENTINEL_{}_", step.to_ascii_uppercase().replace('-', "_"))
}

/// Reads the settings of `step` from `vars`.
pub fn from_env<T: DeserializeOwned>(
    step: &str,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<T, SettingsError> {
    let p = prefix(step);
    let map: BTreeMap<String, String> = vars
        .filter_map(|(k, v)| {
            k.strip_prefix(&p)
                .map(|rest| (rest.to_ascii_lowercase(), v))
        })
        .collect();
    T::deserialize(Settings {
        map: map.into_iter().collect(),
        i: 0,
        value: None,
    })
    .map_err(|e| {
        match e
            .0
            .strip_prefix("missing setting `")
            .and_then(|r| r.strip_suffix('`'))
        {
            Some(field) => SettingsError(format!(
                "missing setting `{field}` ({p}{})",
                field.to_ascii_uppercase()
            )),
            None => e,
        }
    })
}

struct Settings {
    map: Vec<(String, String)>,
    i: usize,
    value: Option<String>,
}

impl<'de> de::Deserializer<'de> for Settings {
    type Error = SettingsError;
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SettingsError> {
        visitor.visit_map(self)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de> MapAccess<'de> for Settings {
    type Error = SettingsError;
    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, SettingsError> {
        match self.map.get(self.i) {
            Some((k, v)) => {
                self.value = Some(v.clone());
                self.i += 1;
                seed.deserialize(k.clone().into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, SettingsError> {
        let v = self.value.take().unwrap_or_default();
        seed.deserialize(Value(v))
    }
}

struct Value(String);

macro_rules! parse {
    ($($m:ident $visit:ident $t:ty),*) => {$(
        fn $m<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SettingsError> {
            let n: $t = self.0.trim().parse().map_err(|_| SettingsError(format!("`{}` is not a valid {}", self.0, stringify!($t))))?;
            visitor.$visit(n)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Value {
    type Error = SettingsError;
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SettingsError> {
        visitor.visit_string(self.0)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SettingsError> {
        if self.0.is_empty() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }
    parse!(deserialize_bool visit_bool bool, deserialize_u8 visit_u8 u8, deserialize_u16 visit_u16 u16,
        deserialize_u32 visit_u32 u32, deserialize_u64 visit_u64 u64, deserialize_i32 visit_i32 i32,
        deserialize_i64 visit_i64 i64, deserialize_f64 visit_f64 f64);
    serde::forward_to_deserialize_any! {
        i8 i16 i128 u128 f32 char str string bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}
