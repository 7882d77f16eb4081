//! The stdio transport (`taskstream mcp`): one JSON-RPC message (or batch) per line on
//! stdin, one answer per line on stdout, logs on stderr only, until stdin closes or the
//! process is signalled.
//!
//! The process is its client's only caller, so there is no token: it is read-only unless
//! started with `--admin`, and the name given with `--name` is logged with every mutating
//! call. It connects to the configured Redis in the background, as `taskstream serve`
//! does, so `initialize` is answered at once; tools called before Redis answers fail
//! with a message saying so.

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, RpcError, INVALID_REQUEST};
use super::Session;
use crate::api::{ApiState, Caller, Tokens};
use crate::config::{ApiRole, Config};

/// A line read, or the size limit it went over.
type Line = Result<Vec<u8>, usize>;

/// Reads stdin line by line on a thread of its own (a blocked read must not keep the
/// runtime from shutting down); lines longer than `limit` are dropped and reported.
fn read_lines(limit: usize, tx: mpsc::Sender<Line>) {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    let mut r = stdin.lock();
    let mut line = Vec::new();
    let mut over = false;
    loop {
        let (end, used) = {
            let buf = match r.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => &[][..],
            };
            if buf.is_empty() {
                if !line.is_empty() && !over {
                    let _ = tx.blocking_send(Ok(line));
                }
                return;
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    if !over {
                        line.extend_from_slice(&buf[..i]);
                    }
                    (true, i + 1)
                }
                None => {
                    if !over {
                        line.extend_from_slice(buf);
                    }
                    (false, buf.len())
                }
            }
        };
        r.consume(used);
        if line.len() > limit {
            over = true;
            line = Vec::new();
        }
        if end {
            let msg = if over {
                Err(limit)
            } else {
                Ok(std::mem::take(&mut line))
            };
            over = false;
            if tx.blocking_send(msg).is_err() {
                return;
            }
        }
    }
}

/// Serves MCP on stdin and stdout for `name` (admin when `admin`), against the Redis of
/// `cfg`, until stdin closes or `stop` fires.
pub async fn run(
    cfg: &Config,
    admin: bool,
    name: &str,
    stop: CancellationToken,
) -> Result<(), String> {
    let state = ApiState::new(cfg, Tokens::default())?;
    crate::api::connect_in_background(&state, cfg, stop.clone());
    let caller = Caller {
        name: name.to_string(),
        role: if admin { ApiRole::Admin } else { ApiRole::Read },
    };
    let limit = state.max_body_bytes;
    let session = Session::new(state, caller);
    tracing::info!(
        name,
        mode = if admin { "admin" } else { "read-only" },
        "mcp server on stdio"
    );
    let (tx, mut rx) = mpsc::channel::<Line>(16);
    std::thread::Builder::new()
        .name("mcp-stdin".into())
        .spawn(move || read_lines(limit, tx))
        .map_err(|e| format!("cannot start the stdin reader: {e}"))?;
    loop {
        let line = tokio::select! {
            l = rx.recv() => l,
            _ = stop.cancelled() => None,
        };
        let answer: Option<Value> = match line {
            None => break,
            Some(Ok(l)) if l.iter().all(u8::is_ascii_whitespace) => continue,
            Some(Ok(l)) => session.process(protocol::parse(&l)).await,
            Some(Err(limit)) => Some(protocol::error(
                Value::Null,
                &RpcError::new(
                    INVALID_REQUEST,
                    format!("the message is longer than {limit} bytes (api.max_body_bytes)"),
                ),
            )),
        };
        if let Some(v) = answer {
            let mut text = v.to_string();
            text.push('\n');
            // A line at a time, synchronously: this process serves one client, which
            // waits for the answer anyway.
            let wrote = {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|_| out.flush())
            };
            if let Err(e) = wrote {
                // The client went away.
                tracing::info!(error = %e, "mcp: stdout closed");
                break;
            }
        }
    }
    tracing::info!("mcp server on stdio: done");
    Ok(())
}
