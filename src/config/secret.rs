//! Connection URLs that may carry a password: shown redacted everywhere but to the client that
//! connects.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A connection URL that may carry a password. `Debug`, `Display` and serialization show it
/// redacted; only [`SecretUrl::expose`] gives the real value, for the client that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut parsed) => {
                if parsed.password().is_some() {
                    let _ = parsed.set_password(Some("REDACTED"));
                }
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = k.contains("password") || k.contains("secret");
                        (
                            k.into_owned(),
                            if secret {
                                "REDACTED".into()
                            } else {
                                v.into_owned()
                            },
                        )
                    })
                    .collect();
                if !pairs.is_empty() {
                    parsed.query_pairs_mut().clear().extend_pairs(pairs);
                }
                parsed.to_string()
            }
            Err(_) => "<unparseable url>".to_string(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

impl SecretUrl {
    /// `Some(problem)` unless it parses as a URL with one of `schemes`. The parser's messages
    /// never include the URL itself, so no secret leaks into the problem.
    pub fn scheme_problem(&self, schemes: &[&str]) -> Option<String> {
        match url::Url::parse(&self.0) {
            Ok(u) if schemes.contains(&u.scheme()) => None,
            Ok(u) => Some(format!(
                "scheme `{}` is not one of {}",
                u.scheme(),
                schemes.join(", ")
            )),
            Err(e) => Some(format!("not a valid URL: {e}")),
        }
    }
}

/// A secret that is not a URL (a password, a token). `Debug`, `Display` and serialization show
/// `REDACTED` (or nothing when it is empty); only [`Secret::expose`] gives the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn shown(&self) -> &'static str {
        if self.0.is_empty() {
            ""
        } else {
            "REDACTED"
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.shown())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}
