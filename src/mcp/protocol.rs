//! JSON-RPC 2.0, as MCP uses it: parse a message or a batch, answer each request, send
//! nothing for notifications (nor for responses a client sends). Pure: no I/O, no MCP
//! methods (those are in [`super::Session`]); both transports feed bytes in and write
//! whatever [`process`] returns.
//!
//! - Not JSON → one error `-32700` (id `null`).
//! - JSON but not a request (no `"jsonrpc": "2.0"`, a method that is not a string, params
//!   that are neither an object nor an array, an id that is not a string, number or null),
//!   or an empty batch → `-32600`, with the request's id when it had a usable one.
//! - A batch is answered with an array of the answers to its requests, in order; a batch
//!   of notifications only gets no answer at all.

use std::future::Future;

use serde_json::{json, Map, Value};

/// Invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Not a JSON-RPC request.
pub const INVALID_REQUEST: i64 = -32600;
/// No such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Bad parameters (MCP: also an unknown tool or arguments that do not fit its schema).
pub const INVALID_PARAMS: i64 = -32602;
/// The server failed.
pub const INTERNAL_ERROR: i64 = -32603;

/// A request or notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `None` for a notification (no `id` member); a request's id otherwise.
    pub id: Option<Value>,
    /// The method.
    pub method: String,
    /// Its params (`null` when absent).
    pub params: Value,
}

impl Request {
    /// The params as an object (absent params are an empty one).
    pub fn params_object(&self) -> Result<Map<String, Value>, RpcError> {
        match &self.params {
            Value::Null => Ok(Map::new()),
            Value::Object(m) => Ok(m.clone()),
            _ => Err(RpcError::invalid_params(format!(
                "{} takes its params as an object",
                self.method
            ))),
        }
    }
}

/// An error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// One of the codes above.
    pub code: i64,
    /// What went wrong, and the fix.
    pub message: String,
}

impl RpcError {
    /// An error with `code`.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
    /// `-32602`.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }
    /// `-32601`.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, format!("method {method:?} not found"))
    }
}

/// One element of what a client sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request or notification to answer.
    Request(Request),
    /// A response to a request of the server (this server sends none): ignored.
    Response,
    /// Not a valid message: answered with this error (and the id, if usable).
    Invalid(Value, RpcError),
}

/// What a client sent, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// One message.
    Single(Message),
    /// A non-empty batch.
    Batch(Vec<Message>),
    /// Nothing usable (not JSON, or an empty batch): answer with this error response.
    Unusable(Value),
}

impl Incoming {
    /// The requests (not notifications) in it.
    pub fn requests(&self) -> Vec<&Request> {
        let all: Vec<&Message> = match self {
            Incoming::Single(m) => vec![m],
            Incoming::Batch(b) => b.iter().collect(),
            Incoming::Unusable(_) => Vec::new(),
        };
        all.into_iter()
            .filter_map(|m| match m {
                Message::Request(r) if r.id.is_some() => Some(r),
                _ => None,
            })
            .collect()
    }
}

/// A success response.
pub fn success(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response.
pub fn error(id: Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": e.code, "message": e.message}})
}

fn message(v: Value) -> Message {
    let Value::Object(mut o) = v else {
        return Message::Invalid(
            Value::Null,
            RpcError::new(
                INVALID_REQUEST,
                "a JSON-RPC message is an object with \"jsonrpc\": \"2.0\"",
            ),
        );
    };
    let id = o.remove("id");
    let usable_id = match &id {
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(v.clone()),
        _ => None,
    };
    let invalid = |why: &str| {
        Message::Invalid(
            usable_id.clone().unwrap_or(Value::Null),
            RpcError::new(INVALID_REQUEST, why),
        )
    };
    if o.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return invalid("the message must have \"jsonrpc\": \"2.0\"");
    }
    if id.is_some() && usable_id.is_none() {
        return invalid("an id is a string, a number or null");
    }
    let Some(method) = o.remove("method") else {
        if id.is_some() && (o.contains_key("result") || o.contains_key("error")) {
            return Message::Response;
        }
        return invalid("a request has a \"method\"");
    };
    let Value::String(method) = method else {
        return invalid("\"method\" must be a string");
    };
    let params = o.remove("params").unwrap_or(Value::Null);
    if !matches!(params, Value::Null | Value::Object(_) | Value::Array(_)) {
        return invalid("\"params\" must be an object or an array");
    }
    Message::Request(Request {
        id: usable_id,
        method,
        params,
    })
}

/// Parses what a client sent.
pub fn parse(bytes: &[u8]) -> Incoming {
    match serde_json::from_slice::<Value>(bytes) {
        Err(e) => Incoming::Unusable(error(
            Value::Null,
            &RpcError::new(PARSE_ERROR, format!("not JSON: {e}")),
        )),
        Ok(Value::Array(a)) if a.is_empty() => Incoming::Unusable(error(
            Value::Null,
            &RpcError::new(INVALID_REQUEST, "an empty batch"),
        )),
        Ok(Value::Array(a)) => Incoming::Batch(a.into_iter().map(message).collect()),
        Ok(v) => Incoming::Single(message(v)),
    }
}

async fn answer<F, Fut>(m: Message, handle: &mut F) -> Option<Value>
where
    F: FnMut(Request) -> Fut,
    Fut: Future<Output = Result<Value, RpcError>>,
{
    match m {
        Message::Response => None,
        Message::Invalid(id, e) => Some(error(id, &e)),
        Message::Request(r) => {
            let id = r.id.clone();
            let out = handle(r).await;
            // A notification is never answered, not even with an error.
            let id = id?;
            Some(match out {
                Ok(v) => success(id, v),
                Err(e) => error(id, &e),
            })
        }
    }
}

/// Answers `incoming` with `handle` (called for every request and notification, in
/// order): the response to send, or `None` when there is nothing to send.
pub async fn process<F, Fut>(incoming: Incoming, mut handle: F) -> Option<Value>
where
    F: FnMut(Request) -> Fut,
    Fut: Future<Output = Result<Value, RpcError>>,
{
    match incoming {
        Incoming::Unusable(e) => Some(e),
        Incoming::Single(m) => answer(m, &mut handle).await,
        Incoming::Batch(ms) => {
            let mut out = Vec::new();
            for m in ms {
                if let Some(v) = answer(m, &mut handle).await {
                    out.push(v);
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echoes the method; `fail` is an error; anything else not found.
    async fn run(text: &str) -> Option<Value> {
        process(parse(text.as_bytes()), |r: Request| async move {
            match r.method.as_str() {
                "echo" => Ok(json!({"method": r.method, "params": r.params})),
                "fail" => Err(RpcError::invalid_params("bad")),
                m => Err(RpcError::method_not_found(m)),
            }
        })
        .await
    }

    fn code(v: &Value) -> i64 {
        v["error"]["code"].as_i64().unwrap()
    }

    fn block_on<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_request_gets_its_result_with_its_id() {
        let v = block_on(run(
            r#"{"jsonrpc":"2.0","id":7,"method":"echo","params":{"a":1}}"#,
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","id":7,"result":{"method":"echo","params":{"a":1}}})
        );
        let v = block_on(run(r#"{"jsonrpc":"2.0","id":"x","method":"fail"}"#)).unwrap();
        assert_eq!((v["id"].clone(), code(&v)), (json!("x"), INVALID_PARAMS));
    }

    #[test]
    fn notifications_get_no_answer_even_when_they_fail() {
        assert_eq!(block_on(run(r#"{"jsonrpc":"2.0","method":"echo"}"#)), None);
        assert_eq!(block_on(run(r#"{"jsonrpc":"2.0","method":"nope"}"#)), None);
        // A response from the client is not answered either.
        assert_eq!(
            block_on(run(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)),
            None
        );
    }

    #[test]
    fn parse_errors_and_invalid_requests_have_standard_codes() {
        let v = block_on(run(r#"{"jsonrpc":"2.0","id":1,"method""#)).unwrap();
        assert_eq!((v["id"].clone(), code(&v)), (Value::Null, PARSE_ERROR));
        let v = block_on(run("[]")).unwrap();
        assert_eq!(code(&v), INVALID_REQUEST);
        let v = block_on(run(r#"{"id":3,"method":"echo"}"#)).unwrap();
        assert_eq!((v["id"].clone(), code(&v)), (json!(3), INVALID_REQUEST));
        let v = block_on(run(r#"{"jsonrpc":"2.0","id":3,"method":5}"#)).unwrap();
        assert_eq!(code(&v), INVALID_REQUEST);
        let v = block_on(run(r#"{"jsonrpc":"2.0","id":{},"method":"echo"}"#)).unwrap();
        assert_eq!((v["id"].clone(), code(&v)), (Value::Null, INVALID_REQUEST));
        let v = block_on(run(
            r#"{"jsonrpc":"2.0","id":1,"method":"echo","params":3}"#,
        ))
        .unwrap();
        assert_eq!(code(&v), INVALID_REQUEST);
        let v = block_on(run("5")).unwrap();
        assert_eq!(code(&v), INVALID_REQUEST);
    }

    #[test]
    fn unknown_methods_are_not_found() {
        let v = block_on(run(r#"{"jsonrpc":"2.0","id":1,"method":"resources/list"}"#)).unwrap();
        assert_eq!(code(&v), METHOD_NOT_FOUND);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resources/list"));
    }

    #[test]
    fn a_batch_answers_its_requests_in_order() {
        let v = block_on(run(r#"[
            {"jsonrpc":"2.0","id":1,"method":"echo"},
            {"jsonrpc":"2.0","method":"echo"},
            1,
            {"jsonrpc":"2.0","id":2,"method":"nope"},
            {"jsonrpc":"2.0","id":3,"result":{}}
        ]"#))
        .unwrap();
        let a = v.as_array().unwrap();
        assert_eq!(a.len(), 3, "{v}");
        assert_eq!(a[0]["id"], json!(1));
        assert_eq!(a[0]["result"]["method"], json!("echo"));
        assert_eq!(
            (a[1]["id"].clone(), code(&a[1])),
            (Value::Null, INVALID_REQUEST)
        );
        assert_eq!(
            (a[2]["id"].clone(), code(&a[2])),
            (json!(2), METHOD_NOT_FOUND)
        );
        // Notifications only: nothing to send.
        assert_eq!(
            block_on(run(r#"[{"jsonrpc":"2.0","method":"echo"}]"#)),
            None
        );
        let inc =
            parse(br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"}]"#);
        let methods: Vec<&str> = inc.requests().iter().map(|r| r.method.as_str()).collect();
        assert_eq!(methods, ["a"]);
    }
}
