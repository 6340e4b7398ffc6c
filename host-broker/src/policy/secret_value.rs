//! A secret value that never prints and is zeroized on drop.
//!
//! It lives in the policy layer because a policy may carry a literal value
//! (`{"value": "..."}`); the secrets layer above re-exports it as `secrets::SecretValue`
//! (docs/architecture.md, "Layers": secrets -> policy, never back).

use std::fmt;

use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

/// A real credential value. Debug/Display print `[redacted]`; the memory is zeroized on drop;
/// there is deliberately no `Serialize`.
#[derive(Clone)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wraps a value (the `String` is moved in, not copied).
    pub fn new(value: String) -> Self {
        SecretValue(Zeroizing::new(value))
    }

    /// The real value; only for substitution. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

/// Accepts strings only; any other type fails with an error that does not echo the input
/// (serde's default "invalid type: integer `123`" would print a numeric secret).
struct SecretVisitor;

impl serde::de::Visitor<'_> for SecretVisitor {
    type Value = SecretValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretValue, E> {
        Ok(SecretValue::new(v.to_string()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<SecretValue, E> {
        Ok(SecretValue::new(v))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretValue, E> {
        Err(E::custom("expected a string (value not shown)"))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretValue, E> {
        Err(E::custom("expected a string (value not shown)"))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretValue, E> {
        Err(E::custom("expected a string (value not shown)"))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretValue, E> {
        Err(E::custom("expected a string (value not shown)"))
    }

    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<SecretValue, E> {
        Err(E::custom("expected a string (value not shown)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let v = SecretValue::new("canary-7f3a9".into());
        assert_eq!(format!("{v}"), "[redacted]");
        assert_eq!(format!("{v:?}"), "[redacted]");
        assert_eq!(format!("{v:#?}"), "[redacted]");
        assert_eq!(v.expose(), "canary-7f3a9");
    }
}
