//! Bearer tokens: who is calling and what they may do.
//!
//! Secrets are compared in constant time (every byte of every configured token is looked
//! at, whatever the caller sent), so the time a refusal takes says nothing about how much
//! of a secret was right. A deployment without tokens is open (each caller is the
//! anonymous admin); [`crate::config::ApiConfig::check_exposure`] allows that on loopback
//! only.

use axum::http::HeaderMap;

use crate::config::{ApiConfig, ApiRole};

use super::problem::Problem;

/// One usable token: its name, secret and role.
#[derive(Clone)]
pub(crate) struct Token {
    /// Name from the configuration (logged with each mutation).
    name: String,
    /// The secret.
    secret: Vec<u8>,
    /// What it may do.
    role: ApiRole,
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`anonymous` when the API has no tokens).
    pub name: String,
    /// What it may do.
    pub role: ApiRole,
}

impl Caller {
    /// Refuses a read token a mutation (403).
    pub(crate) fn require_admin(&self, what: &str) -> Result<(), Problem> {
        if self.role == ApiRole::Admin {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "token {:?} has the read role and cannot {what}; use a token with role = \"admin\"",
                self.name
            )))
        }
    }
}

/// Every token of the deployment.
#[derive(Clone, Default)]
pub(crate) struct Tokens(Vec<Token>);

/// Equal in constant time for a given `secret` length.
fn ct_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = (given.len() ^ secret.len()) as u64;
    for (i, s) in secret.iter().enumerate() {
        diff |= u64::from(given.get(i).copied().unwrap_or(0) ^ s);
    }
    diff == 0
}

impl Tokens {
    /// Reads every secret of `cfg` (`env` looks variables up); the first error names the
    /// token and the fix.
    pub(crate) fn load(
        cfg: &ApiConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Tokens, String> {
        let mut out = Vec::with_capacity(cfg.tokens.len());
        for t in &cfg.tokens {
            out.push(Token {
                name: t.name.clone(),
                secret: t.secret(&env)?.into_bytes(),
                role: t.role,
            });
        }
        Ok(Tokens(out))
    }

    /// Tokens given directly (tests, embedding).
    #[cfg(test)]
    pub(crate) fn of(list: &[(&str, &str, ApiRole)]) -> Tokens {
        Tokens(
            list.iter()
                .map(|(n, s, r)| Token {
                    name: n.to_string(),
                    secret: s.as_bytes().to_vec(),
                    role: *r,
                })
                .collect(),
        )
    }

    /// True when the API is open (no tokens configured).
    pub(crate) fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller of a request with `headers` (401 without a valid bearer token).
    pub(crate) fn caller(&self, headers: &HeaderMap) -> Result<Caller, Problem> {
        if self.is_open() {
            return Ok(Caller {
                name: "anonymous".into(),
                role: ApiRole::Admin,
            });
        }
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(Problem::unauthorized(
                "no Authorization header: send `Authorization: Bearer <token>`",
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header must be `Bearer <token>`")
            })?
            .trim()
            .as_bytes();
        self.find(given).ok_or_else(|| {
            Problem::unauthorized("the bearer token matches no configured token ([[api.tokens]])")
        })
    }

    /// The token whose secret is `given`; looks at every token in full.
    fn find(&self, given: &[u8]) -> Option<Caller> {
        let mut found = None;
        for t in &self.0 {
            if ct_eq(given, &t.secret) && found.is_none() {
                found = Some(Caller {
                    name: t.name.clone(),
                    role: t.role,
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn constant_time_equality_is_equality() {
        assert!(ct_eq(b"abcdef", b"abcdef"));
        assert!(!ct_eq(b"abcdeg", b"abcdef"));
        assert!(!ct_eq(b"abcde", b"abcdef"));
        assert!(!ct_eq(b"abcdefg", b"abcdef"));
        assert!(!ct_eq(b"", b"abcdef"));
        // A prefix padded with NULs is not the secret either.
        assert!(!ct_eq(b"abc\0\0\0", b"abc"));
    }

    #[test]
    fn callers_are_named_by_their_token() {
        let t = Tokens::of(&[
            ("ops", "0123456789abcdef", ApiRole::Admin),
            ("viewer", "fedcba9876543210", ApiRole::Read),
        ]);
        let c = t.caller(&headers("Bearer fedcba9876543210")).unwrap();
        assert_eq!(c.name, "viewer");
        assert_eq!(c.role, ApiRole::Read);
        assert!(c.require_admin("pause").is_err());
        let c = t.caller(&headers("Bearer 0123456789abcdef")).unwrap();
        assert_eq!((c.name.as_str(), c.role), ("ops", ApiRole::Admin));
        assert!(t.caller(&headers("Bearer nope")).is_err());
        assert!(t.caller(&headers("Basic 0123456789abcdef")).is_err());
        assert!(t.caller(&HeaderMap::new()).is_err());
        assert!(Tokens::default().caller(&HeaderMap::new()).is_ok());
    }
}
