//! The `[api]` table: where `taskstream serve` listens and who may call it.
//!
//! ```toml
//! [api]
//! listen = "127.0.0.1:8080"     # default; env TASKSTREAM_API_LISTEN
//! max_body_bytes = 4194304      # largest request body (a batch of enqueues), default 4 MiB
//!
//! [[api.tokens]]
//! name = "ci-deployer"           # logged with every mutation it makes
//! token_env = "TS_DEPLOY_TOKEN"  # or token_file = "/run/secrets/ts-token"
//! role = "admin"                 # "read" (default) or "admin"
//! ```
//!
//! # Why the secrets are not in the file
//!
//! A configuration file is committed, copied into images and printed by `config check`;
//! a bearer token in it leaks with each copy. So a token names where its secret is (a
//! file, as Kubernetes and Docker mount secrets, or an environment variable) and is read
//! only when the server starts ([`ApiToken::secret`]), with an error naming the token and
//! the fix when it cannot be.
//!
//! Serving without tokens is allowed only on a loopback address (a developer's laptop, or
//! behind a proxy that authenticates): the server refuses to start on any other address
//! without them, because the API can enqueue, requeue and delete (issue 12).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default `api.listen`.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8080";

/// Shortest secret accepted: 16 bytes (128 bits if random).
pub const MIN_TOKEN_BYTES: usize = 16;

/// The `[api]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address `taskstream serve` listens on.
    pub listen: String,
    /// Bearer tokens; none means open access, allowed on a loopback address only.
    pub tokens: Vec<ApiToken>,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: DEFAULT_API_LISTEN.into(),
            tokens: Vec::new(),
            max_body_bytes: 4 << 20,
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    /// Read only: stats, lookups, searches, dry runs.
    #[default]
    Read,
    /// Everything, mutations included.
    Admin,
}

/// One `[[api.tokens]]` entry.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Who holds it; logged with each mutation.
    pub name: String,
    /// A file whose content (trimmed) is the secret.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable whose value is the secret.
    #[serde(default)]
    pub token_env: Option<String>,
    /// What it may do.
    #[serde(default)]
    pub role: ApiRole,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("token_file", &self.token_file)
            .field("token_env", &self.token_env)
            .field("role", &self.role)
            .finish()
    }
}

impl ApiToken {
    /// Reads the secret from its file or variable (`env` looks variables up).
    pub fn secret(&self, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
        let (value, from) = match (&self.token_file, &self.token_env) {
            (Some(p), None) => (
                std::fs::read_to_string(p).map_err(|e| {
                    format!(
                        "api token {:?}: cannot read token_file {}: {e} (create it with the secret, or use token_env)",
                        self.name,
                        p.display()
                    )
                })?,
                format!("token_file {}", p.display()),
            ),
            (None, Some(v)) => (
                env(v).ok_or_else(|| {
                    format!(
                        "api token {:?}: environment variable {v} is not set (export it with the secret, or use token_file)",
                        self.name
                    )
                })?,
                format!("environment variable {v}"),
            ),
            _ => {
                return Err(format!(
                    "api token {:?}: set exactly one of token_file and token_env",
                    self.name
                ))
            }
        };
        let secret = value.trim().to_string();
        if secret.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "api token {:?}: the secret in {from} is {} bytes, below the {MIN_TOKEN_BYTES}-byte minimum (make one with `openssl rand -hex 32`)",
                self.name,
                secret.len()
            ));
        }
        Ok(secret)
    }
}

impl ApiConfig {
    /// The listen address, parsed.
    pub fn addr(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|_| {
            format!(
                "must be an address like {DEFAULT_API_LISTEN}, got {:?}",
                self.listen
            )
        })
    }

    /// Problems of the table as (key, reason). The secrets themselves are read at serve
    /// time, not here (a `config check` on a laptop has no production secrets).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Err(e) = self.addr() {
            out.push(("api.listen".into(), e));
        }
        if self.max_body_bytes < 1024 || self.max_body_bytes > 512 << 20 {
            out.push((
                "api.max_body_bytes".into(),
                "must be between 1024 and 536870912".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let key = format!("api.tokens[{i}]");
            if t.name.trim().is_empty() {
                out.push((format!("{key}.name"), "must not be empty".into()));
            } else if !seen.insert(t.name.as_str()) {
                out.push((
                    format!("{key}.name"),
                    format!("{:?} is used by two tokens; names must be unique (they appear in the audit log)", t.name),
                ));
            }
            if t.token_file.is_some() == t.token_env.is_some() {
                out.push((
                    key.clone(),
                    "set exactly one of token_file and token_env (the secret never goes in this file)".into(),
                ));
            }
        }
        out
    }

    /// Refuses open access on an address other than loopback.
    pub fn check_exposure(&self) -> Result<(), String> {
        let addr = self.addr()?;
        if self.tokens.is_empty() && !addr.ip().is_loopback() {
            return Err(format!(
                "api.listen is {addr}, which is not a loopback address, and no [[api.tokens]] are configured: anyone who reaches it could enqueue, requeue and delete. Add tokens (see README \"Control plane\"), or listen on 127.0.0.1"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(file: Option<&str>, env: Option<&str>) -> ApiToken {
        ApiToken {
            name: "t".into(),
            token_file: file.map(PathBuf::from),
            token_env: env.map(String::from),
            role: ApiRole::Read,
        }
    }

    #[test]
    fn open_access_only_on_loopback() {
        let mut c = ApiConfig::default();
        assert!(c.check_exposure().is_ok());
        c.listen = "[::1]:8080".into();
        assert!(c.check_exposure().is_ok());
        c.listen = "0.0.0.0:8080".into();
        let e = c.check_exposure().unwrap_err();
        assert!(e.contains("not a loopback address"), "{e}");
        c.tokens.push(token(None, Some("X")));
        assert!(c.check_exposure().is_ok());
    }

    #[test]
    fn secrets_come_from_one_place_and_are_long_enough() {
        let env = |k: &str| (k == "GOOD").then(|| "0123456789abcdef0123\n".to_string());
        assert_eq!(
            token(None, Some("GOOD")).secret(env).unwrap(),
            "0123456789abcdef0123"
        );
        let e = token(None, Some("MISSING")).secret(env).unwrap_err();
        assert!(e.contains("MISSING is not set"), "{e}");
        let e = token(None, None).secret(env).unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let short = |_: &str| Some("short".to_string());
        let e = token(None, Some("S")).secret(short).unwrap_err();
        assert!(e.contains("below the 16-byte minimum"), "{e}");
        let e = token(Some("/nonexistent/ts-token"), None)
            .secret(env)
            .unwrap_err();
        assert!(e.contains("cannot read token_file"), "{e}");
    }

    #[test]
    fn problems_name_the_key() {
        let mut c = ApiConfig {
            listen: "nope".into(),
            ..ApiConfig::default()
        };
        c.tokens.push(token(Some("/a"), Some("B")));
        c.tokens.push(token(None, Some("B")));
        let keys: Vec<String> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            vec!["api.listen", "api.tokens[0]", "api.tokens[1].name"]
        );
    }
}
