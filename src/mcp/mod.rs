//! The MCP server (Model Context Protocol): the control plane's operations as tools an AI
//! assistant or any MCP client can call — queue stats, task lookup, enqueue, dead-letter
//! search and requeue, pause and resume, saga start, show, list and abort (issue 12.4).
//!
//! Two transports, one [`Session`]: Streamable HTTP at `POST /mcp` on `taskstream serve`
//! ([`http`], with the API's bearer tokens) and newline-delimited JSON-RPC on stdin and
//! stdout for `taskstream mcp` ([`stdio`], what Claude Desktop and most clients launch).
//! The tools ([`tools`]) call the very functions behind the REST handlers, so a queue
//! paused through MCP is paused exactly as through the API, the CLI or the dashboard, and
//! their checks and refusals cannot drift apart.
//!
//! Choices a client would otherwise have to guess:
//! - **Read-only mode:** a read token over HTTP, and `taskstream mcp` without `--admin`,
//!   get a session whose `tools/list` does not show the mutating tools; calling one is a
//!   `-32602` error naming the mode. Every mutating call is logged with the token's name.
//! - **Errors:** a tool that fails (unknown queue, saga already ended, Redis down) answers
//!   `isError: true` with the reason in its text and the problem document as
//!   `structuredContent`; an unknown tool, or arguments that do not fit the tool's input
//!   schema, is a JSON-RPC `-32602` error.
//! - **Lists** (queues, dead letters, sagas) return at most [`tools::MAX_LIMIT`] items and
//!   a `next_cursor` to pass back as `cursor`; `null` when there is nothing more.
//! - **No server-initiated messages:** no SSE stream (`GET /mcp` is a 405), no
//!   resources or prompts; `tools.listChanged` is false.

use serde_json::{json, Value};

use crate::api::{ApiState, Caller};
use crate::config::ApiRole;

pub mod http;
pub mod protocol;
pub mod stdio;
pub mod tools;

use protocol::{Incoming, Request, RpcError};

/// Protocol versions this server speaks, newest first; `initialize` echoes the client's
/// when it is one of them and answers with the first otherwise.
pub const PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// How long a tool call waits for Redis when the process has not connected yet.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the server tells a client it is for (`initialize` → `instructions`).
const INSTRUCTIONS: &str = "taskstream control plane: background task queues on Redis Streams. \
Start with queue_stats to see the queues; task_get finds a task by id; dead_letters_search \
finds failed tasks by type, reason, error text or time. Lists return next_cursor: pass it \
back as cursor for the next page. In read-only mode the mutating tools (enqueue, \
dead_letters_requeue, queue_pause, queue_resume, saga_start, saga_abort) are not offered.";

/// One client's view of the server: who it is and what it may do.
#[derive(Clone)]
pub struct Session {
    state: ApiState,
    caller: Caller,
}

impl Session {
    /// A session of `caller` (a read caller gets the read-only mode).
    pub(crate) fn new(state: ApiState, caller: Caller) -> Self {
        Session { state, caller }
    }

    /// True when the mutating tools are hidden and refused.
    pub fn read_only(&self) -> bool {
        self.caller.role != ApiRole::Admin
    }

    /// Answers what a client sent: the response to write, or `None` for nothing.
    pub async fn process(&self, incoming: Incoming) -> Option<Value> {
        protocol::process(incoming, |r| self.handle(r)).await
    }

    /// Waits up to [`CONNECT_WAIT`] for the first connection to Redis, so a tool called
    /// right after the process started (a client launching `taskstream mcp` calls at
    /// once) does not fail for nothing; after that a call fails as "not connected yet".
    async fn connected(&self) {
        let deadline = std::time::Instant::now() + CONNECT_WAIT;
        while self.state.backend().is_err() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await; // poll
        }
    }

    async fn handle(&self, r: Request) -> Result<Value, RpcError> {
        match r.method.as_str() {
            "initialize" => Ok(initialize(&r.params_object()?)),
            "ping" => Ok(json!({})),
            "tools/list" => {
                let p = r.params_object()?;
                if p.get("cursor").is_some_and(|c| !c.is_null()) {
                    return Err(RpcError::invalid_params(
                        "tools/list has one page: this server never returns a nextCursor",
                    ));
                }
                Ok(json!({"tools": tools::list(self.read_only())}))
            }
            "tools/call" => {
                let mut p = r.params_object()?;
                let Some(Value::String(name)) = p.remove("name") else {
                    return Err(RpcError::invalid_params(
                        "tools/call needs params.name, the tool's name (see tools/list)",
                    ));
                };
                let args = p.remove("arguments").unwrap_or(Value::Null);
                self.connected().await;
                tools::call(&name, args, &self.state, &self.caller).await
            }
            // Notifications this server takes note of and has nothing to do for.
            m if m.starts_with("notifications/") => Ok(Value::Null),
            m => Err(RpcError::method_not_found(m)),
        }
    }
}

fn initialize(params: &serde_json::Map<String, Value>) -> Value {
    let asked = params.get("protocolVersion").and_then(Value::as_str);
    let version = asked
        .filter(|v| PROTOCOL_VERSIONS.contains(v))
        .unwrap_or(PROTOCOL_VERSIONS[0]);
    json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": "taskstream", "version": env!("CARGO_PKG_VERSION")},
        "instructions": INSTRUCTIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialize_echoes_a_supported_version_and_offers_its_newest_otherwise() {
        let p = |v: &str| {
            json!({"protocolVersion": v, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}})
                .as_object()
                .unwrap()
                .clone()
        };
        assert_eq!(
            initialize(&p("2025-03-26"))["protocolVersion"],
            "2025-03-26"
        );
        assert_eq!(
            initialize(&p("2024-11-05"))["protocolVersion"],
            "2024-11-05"
        );
        assert_eq!(
            initialize(&p("1999-01-01"))["protocolVersion"],
            PROTOCOL_VERSIONS[0]
        );
        let r = initialize(&p("2025-06-18"));
        assert_eq!(r["serverInfo"]["name"], "taskstream");
        assert_eq!(r["capabilities"]["tools"]["listChanged"], false);
    }
}
