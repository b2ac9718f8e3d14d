//! `Secret`: a string that never prints itself (tokens, the webhook secret, the API token).

use serde::{Deserialize, Deserializer};
use std::fmt;
use subtle::ConstantTimeEq;

/// A secret value. `Debug` and `Display` print `***`, so a secret cannot leak through a
/// log line or an error message by accident; call [`Secret::expose`] where the value is needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares in constant time, so the answer's timing does not reveal how much of a guess
    /// was right.
    pub fn matches(&self, candidate: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(candidate.as_bytes()))
    }

    /// A fresh random secret of `len` URL-safe characters.
    pub fn generate(len: usize) -> Self {
        use rand::distr::{Alphanumeric, SampleString};
        Secret(Alphanumeric.sample_string(&mut rand::rng(), len))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("b6fd61ec974d1652082a802a4d8e443712138ed");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert!(s.matches("b6fd61ec974d1652082a802a4d8e443712138ed"));
        assert!(!s.matches("b6fd61ec974d1652082a802a4d8e443712138ee"));
        assert!(!s.matches(""));
        assert_eq!(Secret::generate(40).expose().len(), 40);
    }
}
