//! Request parsing that answers with problem documents.
//!
//! axum's own extractors reject bad input with plain-text bodies; the API promises RFC
//! 9457 documents for every refusal, so bodies and query strings are parsed here: a JSON
//! body that is not JSON (or not the expected shape) is a 400 naming the line and column,
//! a body above `api.max_body_bytes` a 413, and a query parameter that is unknown,
//! repeated or not a number a 400 naming it.

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::problem::Problem;
use super::ApiState;

/// A JSON body of type `T`.
pub(crate) struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiState> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Problem> {
        if let Some(ct) = req.headers().get(axum::http::header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("");
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("application/json") {
                return Err(Problem::new(
                    axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-media-type",
                    "Unsupported media type",
                    format!("the body must be application/json, got {ct:?}"),
                ));
            }
        }
        let limit = state.max_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                Problem::too_large(format!(
                    "the request body is larger than {limit} bytes (api.max_body_bytes); send fewer tasks per batch"
                ))
            })?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Problem::bad_request(format!("the body is not JSON: {e}")))?;
        if !v.is_object() {
            return Err(Problem::bad_request("the body must be a JSON object"));
        }
        serde_json::from_value(v)
            .map(Body)
            .map_err(|e| Problem::bad_request(format!("the body is not valid: {e}")))
    }
}

/// A value that must be written as a JSON object. serde's derived structs also read
/// arrays (`["x"]` as the first field), which no client means; this refuses them.
#[derive(Debug)]
pub(crate) struct Obj<T>(pub T);

impl<'de, T: DeserializeOwned> serde::Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        serde_json::from_value(serde_json::Value::Object(m))
            .map(Obj)
            .map_err(serde::de::Error::custom)
    }
}

/// Decodes `%XX` escapes and `+` of one query component.
fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// A parsed query string: each parameter once, only known ones.
#[derive(Debug, Default)]
pub(crate) struct Query(BTreeMap<String, String>);

impl Query {
    /// Parses `raw` (without `?`), allowing only parameters named in `known`.
    pub(crate) fn parse(raw: Option<&str>, known: &[&str]) -> Result<Query, Problem> {
        let mut map = BTreeMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode(k).map_err(Problem::bad_request)?;
            let v = decode(v).map_err(Problem::bad_request)?;
            if !known.contains(&k.as_str()) {
                return Err(Problem::bad_request(format!(
                    "unknown query parameter {k:?}; this endpoint takes {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(Problem::bad_request(format!(
                    "query parameter {k:?} is given twice"
                )));
            }
        }
        Ok(Query(map))
    }

    /// The text of `name`, if given (an empty value is given, as empty).
    pub(crate) fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The text of `name`, if given and not empty (filters: `type=` filters nothing).
    pub(crate) fn nonempty(&self, name: &str) -> Option<&str> {
        self.str(name).filter(|s| !s.is_empty())
    }

    /// `name` as a number in `range`, if given.
    pub(crate) fn u64_in(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, Problem> {
        let Some(v) = self.str(name) else {
            return Ok(None);
        };
        match v.parse::<u64>() {
            Ok(n) if range.contains(&n) && !(v.len() > 1 && v.starts_with('0')) => Ok(Some(n)),
            _ => Err(Problem::bad_request(format!(
                "query parameter {name:?} must be a whole number from {} to {}, got {v:?}",
                range.start(),
                range.end()
            ))),
        }
    }
}

/// Whole numbers in JSON bodies: `5` and `5.0` alike (JSON Schema's `integer` admits both,
/// and some clients write every number as a float), never `5.5`.
pub(crate) mod whole {
    use serde::{Deserialize, Deserializer};

    fn of<E: serde::de::Error>(v: serde_json::Number, max: u64) -> Result<u64, E> {
        let n = v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= max as f64)
                .map(|f| f as u64)
        });
        match n {
            Some(n) if n <= max => Ok(n),
            _ => Err(E::custom(format!(
                "expected a whole number from 0 to {max}, got {v}"
            ))),
        }
    }

    /// An optional `u64` (null counts as absent).
    pub(crate) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(|n| of(n, u64::MAX))
            .transpose()
    }

    /// An optional `u32`.
    pub(crate) fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(|n| of(n, u32::MAX as u64).map(|n| n as u32))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_and_refuse_the_unknown() {
        let q = Query::parse(
            Some("error=time%20out&type=a.b+c&limit=5"),
            &["error", "type", "limit"],
        )
        .unwrap();
        assert_eq!(q.str("error"), Some("time out"));
        assert_eq!(q.str("type"), Some("a.b c"));
        assert_eq!(q.u64_in("limit", 1..=100).unwrap(), Some(5));
        assert!(q.u64_in("limit", 10..=100).is_err());
        assert!(Query::parse(Some("nope=1"), &["limit"]).is_err());
        assert!(Query::parse(Some("limit=1&limit=2"), &["limit"]).is_err());
        assert!(Query::parse(Some("limit=%zz"), &["limit"]).is_err());
        assert!(Query::parse(Some("limit=%ff"), &["limit"]).is_err());
        assert_eq!(Query::parse(None, &[]).unwrap().str("x"), None);
        // Present but empty is not absent for a number; `07` is not how 7 is written.
        let q = Query::parse(Some("limit=&type="), &["limit", "type"]).unwrap();
        assert!(q.u64_in("limit", 1..=100).is_err());
        assert_eq!(q.nonempty("type"), None);
        let q = Query::parse(Some("limit=07"), &["limit"]).unwrap();
        assert!(q.u64_in("limit", 1..=100).is_err());
    }

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "whole::opt_u64")]
            n: Option<u64>,
            #[serde(default, deserialize_with = "whole::opt_u32")]
            m: Option<u32>,
        }
        let t: T = serde_json::from_str(r#"{"n": 115.0, "m": 3}"#).unwrap();
        assert_eq!((t.n, t.m), (Some(115), Some(3)));
        let t: T = serde_json::from_str(r#"{"n": null}"#).unwrap();
        assert_eq!((t.n, t.m), (None, None));
        assert!(serde_json::from_str::<T>(r#"{"n": 1.5}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"n": -1}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"m": 4294967296}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"n": "5"}"#).is_err());
    }
}
