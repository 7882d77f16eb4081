//! Permission refusals: every `NOPERM` Redis answers is said — which command, which user,
//! which `ACL SETUSER` grants it — in the log, on `/ready` and in the error value, and is
//! retried until the permission is there (issue 10.6).
//!
//! Why: a Redis user without a permission the worker needs stalled it silently. With
//! `-@scripting` the start-up loop swallowed the `SCRIPT LOAD` refusal and `/ready` said
//! "consumer groups not created yet" forever; without `MULTI`/`EXEC` every ack failed and
//! was retried for a minute as if Redis were briefly away. A refusal lasts until an
//! operator changes the ACL, so it is neither an outage nor a passing fault.
//!
//! How: the broker's command connection ([`super::Broker::c`]) and the group readers'
//! exclusive ones are wrapped in [`Watched`], a [`ConnectionLike`] that looks at each reply
//! of each command (pipelines included). A refusal — a `NOPERM` reply, or a script whose
//! inner command the user may not run (Redis answers that one as `ERR The user executing
//! the script can't run this command`) — is recorded in [`crate::health`] under the
//! command that was sent, and logged at error level, once per command per [`LOG_EVERY`].
//! The next success of that same command clears it (and says so in the log), so `/ready`
//! turns 200 again by itself once the permission is granted at runtime and the loop that
//! was refused retries. A [`redis::RedisError`] converted to [`crate::Error`] becomes
//! [`crate::Error::NoPermission`] ([`no_permission`]), which the loops match to keep
//! retrying without reporting Redis as unreachable.
//!
//! The user is learned from `CLIENT INFO` on the refused connection (the first time only);
//! when that is refused too, it is the user of `redis.url` if the process connects as one
//! user only (`default` for a URL without one), else the fix says `<user>`. Commands whose refusal costs nothing by
//! design (`CONFIG GET` in the preflight, `XINFO STREAM` for the arrival counter,
//! `CLIENT SETNAME`) run on the bare connection and are not recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::scripts;

/// How often the same refusal is logged again while it lasts.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(30);

/// Where the least-privilege roles are documented.
const SEE: &str = "see README \"Least-privilege Redis users\"";

/// Written when the user could not be learned.
const UNKNOWN_USER: &str = "<user>";

/// Commands whose second word is a subcommand with its own ACL rule (`script|load`).
const CONTAINERS: &[&str] = &[
    "SCRIPT", "XGROUP", "XINFO", "CONFIG", "CLIENT", "ACL", "OBJECT", "MEMORY", "FUNCTION",
    "COMMAND", "CLUSTER", "MODULE", "SLOWLOG", "LATENCY", "PUBSUB",
];

/// What Redis refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Denial {
    /// The command itself, by its ACL name (`evalsha`, `script|load`).
    Command(String),
    /// One of the keys it touches.
    Key,
    /// A pub/sub channel.
    Channel,
    /// A command run inside a Lua script.
    InScript,
}

/// The refusal in an error text, if it is one.
fn denial_in(text: &str) -> Option<Denial> {
    if text.contains("user executing the script can't run") {
        return Some(Denial::InScript);
    }
    // Replies say `NOPERM …`; redis-rs displays the same error as `NoPerm: …`.
    let at = text.to_ascii_lowercase().find("noperm")?;
    let rest = &text[at..];
    if let Some(i) = rest.find("to run the '") {
        let name = &rest[i + "to run the '".len()..];
        if let Some(end) = name.find('\'') {
            return Some(Denial::Command(name[..end].to_ascii_lowercase()));
        }
    }
    if rest.contains("key") {
        Some(Denial::Key)
    } else if rest.contains("channel") {
        Some(Denial::Channel)
    } else {
        Some(Denial::Command(String::new()))
    }
}

/// The refusal in a reply, if it is one.
fn denial_of(v: &Value) -> Option<Denial> {
    match v {
        Value::ServerError(e) => denial_in(&format!("{} {}", e.code(), e.details().unwrap_or(""))),
        _ => None,
    }
}

/// The name of `cmd` as operators write it: `EVALSHA`, `SCRIPT LOAD`, `XGROUP CREATE`.
fn display_name(cmd: &Cmd) -> String {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(b) => Some(String::from_utf8_lossy(b).to_ascii_uppercase()),
        _ => None,
    });
    let first = args.next().unwrap_or_default();
    if CONTAINERS.contains(&first.as_str()) {
        if let Some(sub) = args.next() {
            return format!("{first} {sub}");
        }
    }
    first
}

/// The script file of an `EVALSHA`/`EVAL` of the table, if it is one.
fn script_file(cmd: &Cmd) -> Option<&'static str> {
    let mut args = cmd.args_iter();
    match args.next()? {
        redis::Arg::Simple(b) if b.eq_ignore_ascii_case(b"EVALSHA") => {}
        _ => return None,
    }
    let sha = match args.next()? {
        redis::Arg::Simple(b) => std::str::from_utf8(b).ok()?.to_ascii_lowercase(),
        _ => return None,
    };
    scripts::TABLE
        .iter()
        .find(|(id, _, _)| scripts::script(*id).get_hash() == sha)
        .map(|(_, file, _)| *file)
}

/// The category whose grant covers `acl` (the README roles grant categories).
fn category(acl: &str) -> Option<&'static str> {
    let first = acl.split('|').next().unwrap_or("");
    match first {
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "script" | "fcall" | "fcall_ro"
        | "function" => Some("scripting"),
        "multi" | "exec" | "discard" | "watch" | "unwatch" => Some("transaction"),
        "client" | "ping" | "hello" | "echo" => Some("connection"),
        c if c.starts_with('x') => Some("stream"),
        _ => None,
    }
}

/// `(command, fix)` for `denial` of `sent` (display name) by `user`.
fn explain(sent: &str, file: Option<&str>, denial: &Denial, user: &str) -> (String, String) {
    match denial {
        Denial::Command(acl) => {
            let acl = if acl.is_empty() {
                sent.to_ascii_lowercase().replace(' ', "|")
            } else {
                acl.clone()
            };
            let command = acl.replace('|', " ").to_ascii_uppercase();
            let fix = match category(&acl) {
                Some(c) => format!("grant it with  ACL SETUSER {user} +{acl}  (or +@{c}; {SEE})"),
                None => format!("grant it with  ACL SETUSER {user} +{acl}  ({SEE})"),
            };
            (command, fix)
        }
        Denial::Key => (
            format!("{sent} on a key outside the user's key patterns"),
            format!("grant taskstream's keys with  ACL SETUSER {user} ~ts:*  ({SEE})"),
        ),
        Denial::Channel => (
            format!("{sent} on a channel outside the user's channel patterns"),
            format!("grant the channel with  ACL SETUSER {user} &<channel>  ({SEE})"),
        ),
        Denial::InScript => (
            format!(
                "a command inside script {} ({sent})",
                file.unwrap_or("(not taskstream's)")
            ),
            format!(
                "grant the commands taskstream's scripts run, as the worker role does:  ACL SETUSER {user} +@read +@write +@stream +@scripting  ({SEE})"
            ),
        ),
    }
}

/// The message of a refusal, as the log, `/ready` and [`crate::Error::NoPermission`] say it.
fn message(command: &str, user: &str, fix: &str) -> String {
    crate::Error::NoPermission {
        command: command.into(),
        user: user.into(),
        fix: fix.into(),
    }
    .to_string()
}

/// The ACL users this process was configured to connect as (`default` for none).
static CONFIGURED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Notes that a connection of this process is configured with `user` (see [`super::client`]).
pub(crate) fn configured_user(user: Option<&str>) {
    let u = user.filter(|u| !u.is_empty()).unwrap_or("default");
    let mut v = CONFIGURED.lock().expect("poisoned");
    if !v.iter().any(|x| x == u) {
        v.push(u.to_string());
    }
}

/// The configured user when there is exactly one, else [`UNKNOWN_USER`].
fn fallback_user() -> String {
    match CONFIGURED.lock().expect("poisoned").as_slice() {
        [one] => one.clone(),
        _ => UNKNOWN_USER.into(),
    }
}

/// When each refusal (by key) was last logged.
static LOGGED: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);
/// The user of the latest refusal, for [`no_permission`] (one user per process is the
/// common case; with several the name is a best guess, the command and fix are exact).
static LAST_USER: Mutex<Option<String>> = Mutex::new(None);

/// Records, counts (`taskstream_redis_command_errors_total{op="noperm"}`) and logs (at most
/// once per [`LOG_EVERY`]) a refusal of `key`.
fn record(key: String, command: &str, user: &str, fix: &str) {
    let text = message(command, user, fix);
    *LAST_USER.lock().expect("poisoned") = Some(user.to_string());
    crate::health::permission_refused(&key, text.clone());
    let log = {
        let mut g = LOGGED.lock().expect("poisoned");
        let m = g.get_or_insert_with(HashMap::new);
        match m.get(&key) {
            Some(t) if t.elapsed() < LOG_EVERY => false,
            _ => {
                m.insert(key, Instant::now());
                true
            }
        }
    };
    metrics::counter!(crate::metrics::REDIS_ERRORS_TOTAL, "op" => "noperm").increment(1);
    if log {
        tracing::error!(command = %command, user = %user, "{text}");
    }
}

/// Clears the refusal of `key` after a success of it.
fn clear(key: &str) {
    if let Some(text) = crate::health::permission_granted(key) {
        if let Some(m) = LOGGED.lock().expect("poisoned").as_mut() {
            m.remove(key);
        }
        tracing::info!(command = %key, "Redis allows {key} again; the refusal is cleared (was: {text})");
    }
}

/// Clears the refusals `cmd` succeeding disproves.
fn succeeded(cmd: &Cmd) {
    if !crate::health::any_refused() {
        return;
    }
    let name = display_name(cmd);
    if let Some(file) = script_file(cmd) {
        clear(&format!("{name} {file}"));
    }
    clear(&name);
}

/// A permission refusal in `e`: `(command, user, fix)` for [`crate::Error::NoPermission`].
pub(crate) fn no_permission(e: &RedisError) -> Option<(String, String, String)> {
    let text = e.to_string();
    let denial = denial_in(&text)?;
    let user = LAST_USER
        .lock()
        .expect("poisoned")
        .clone()
        .unwrap_or_else(fallback_user);
    let sent = match &denial {
        Denial::Command(acl) if !acl.is_empty() => acl.replace('|', " ").to_ascii_uppercase(),
        _ => "a command".into(),
    };
    let (command, fix) = explain(&sent, None, &denial, &user);
    Some((command, user, fix))
}

/// A connection whose replies are watched for permission refusals (see the module docs).
pub(crate) struct Watched<C> {
    inner: C,
    /// The ACL user of `inner`, learned at the first refusal.
    user: Arc<OnceLock<String>>,
}

impl<C: ConnectionLike + Send> Watched<C> {
    /// Watches `inner`; `user` caches its ACL user across wrappers of one connection.
    pub(crate) fn new(inner: C, user: Arc<OnceLock<String>>) -> Self {
        Watched { inner, user }
    }

    /// The wrapped connection.
    pub(crate) fn into_inner(self) -> C {
        self.inner
    }

    /// The ACL user of the connection (`CLIENT INFO`, asked once).
    async fn user(&mut self) -> String {
        if let Some(u) = self.user.get() {
            return u.clone();
        }
        let r: redis::RedisResult<String> = redis::cmd("CLIENT")
            .arg("INFO")
            .query_async(&mut self.inner)
            .await;
        let u = match r {
            Ok(info) => match info
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("user="))
            {
                Some(u) => u.to_string(),
                None => fallback_user(),
            },
            // Refused as well: don't ask again (every ask is an ACL LOG entry).
            Err(e) if denial_in(&e.to_string()).is_some() => fallback_user(),
            Err(_) => return fallback_user(),
        };
        let _ = self.user.set(u.clone());
        u
    }

    /// Records the refusals found: `(sent command, its script file, denial)`.
    async fn refused(&mut self, found: Vec<(String, Option<&'static str>, Denial)>) {
        if found.is_empty() {
            return;
        }
        let user = self.user().await;
        for (sent, file, denial) in found {
            let key = match (&denial, file) {
                (Denial::InScript, Some(f)) => format!("{sent} {f}"),
                _ => sent.clone(),
            };
            let (command, fix) = explain(&sent, file, &denial, &user);
            record(key, &command, &user, &fix);
        }
    }
}

/// What one reply says about `cmd`: a refusal to record, or a success that may clear one.
fn judge(cmd: &Cmd, reply: &Value, found: &mut Vec<(String, Option<&'static str>, Denial)>) {
    match reply {
        Value::ServerError(_) => {
            if let Some(d) = denial_of(reply) {
                found.push((display_name(cmd), script_file(cmd), d));
            }
        }
        _ => succeeded(cmd),
    }
}

impl<C: ConnectionLike + Send> ConnectionLike for Watched<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = self.inner.req_packed_command(cmd).await;
            let mut found = Vec::new();
            match &r {
                Ok(v) => judge(cmd, v, &mut found),
                Err(e) => {
                    if let Some(d) = denial_in(&e.to_string()) {
                        found.push((display_name(cmd), script_file(cmd), d));
                    }
                }
            }
            self.refused(found).await;
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            let mut found = Vec::new();
            match &r {
                Ok(replies) if !pipeline.is_transaction() => {
                    for (cmd, v) in pipeline.cmd_iter().zip(replies) {
                        judge(cmd, v, &mut found);
                    }
                }
                // A transaction: only EXEC's reply comes back, and it went through.
                Ok(replies) => {
                    if crate::health::any_refused()
                        && !matches!(replies.first(), Some(Value::ServerError(_)))
                    {
                        for c in ["MULTI", "EXEC"] {
                            succeeded(&redis::cmd(c));
                        }
                        pipeline.cmd_iter().for_each(succeeded);
                    }
                }
                Err(e) => {
                    if let Some(d) = denial_in(&e.to_string()) {
                        let sent = match &d {
                            Denial::Command(acl) if !acl.is_empty() => {
                                acl.replace('|', " ").to_ascii_uppercase()
                            }
                            _ => pipeline
                                .cmd_iter()
                                .next()
                                .map(display_name)
                                .unwrap_or_default(),
                        };
                        found.push((sent, None, d));
                    }
                }
            }
            self.refused(found).await;
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_read_from_the_texts_redis_sends() {
        assert_eq!(
            denial_in("NOPERM this user has no permissions to run the 'script|load' command"),
            Some(Denial::Command("script|load".into()))
        );
        assert_eq!(
            denial_in("NOPERM User w1 has no permissions to run the 'evalsha' command"),
            Some(Denial::Command("evalsha".into()))
        );
        assert_eq!(
            denial_in(
                "NOPERM this user has no permissions to access one of the keys used as arguments"
            ),
            Some(Denial::Key)
        );
        assert_eq!(
            denial_in("ERR The user executing the script can't run this command or subcommand script: 7838a1, on @user_script:1."),
            Some(Denial::InScript)
        );
        assert_eq!(
            denial_in("Pipeline failures: [(Index 0, error: NoPerm: this user has no permissions to run the 'script|load' command)]"),
            Some(Denial::Command("script|load".into()))
        );
        assert_eq!(denial_in("ERR unknown command"), None);
        assert_eq!(denial_in("NOSCRIPT No matching script"), None);
    }

    #[test]
    fn the_fix_names_the_command_and_its_category() {
        let (c, f) = explain("EVALSHA", None, &Denial::Command("evalsha".into()), "w1");
        assert_eq!(c, "EVALSHA");
        assert_eq!(
            message(&c, "w1", &f),
            "Redis refused EVALSHA for user \"w1\" (NOPERM): grant it with  ACL SETUSER w1 +evalsha  (or +@scripting; see README \"Least-privilege Redis users\")"
        );
        let (c, f) = explain(
            "SCRIPT LOAD",
            None,
            &Denial::Command("script|load".into()),
            "w1",
        );
        assert_eq!(c, "SCRIPT LOAD");
        assert!(
            f.contains("+script|load") && f.contains("+@scripting"),
            "{f}"
        );
        let (c, f) = explain("MULTI", None, &Denial::Command("multi".into()), "w2");
        assert_eq!(c, "MULTI");
        assert!(
            f.contains("ACL SETUSER w2 +multi") && f.contains("+@transaction"),
            "{f}"
        );
        let (c, f) = explain("XADD", None, &Denial::Key, "p");
        assert!(c.starts_with("XADD on a key"), "{c}");
        assert!(f.contains("ACL SETUSER p ~ts:*"), "{f}");
    }

    #[test]
    fn commands_are_named_with_their_subcommand() {
        assert_eq!(
            display_name(redis::cmd("script").arg("load").arg("x")),
            "SCRIPT LOAD"
        );
        assert_eq!(display_name(redis::cmd("XACK").arg("s").arg("g")), "XACK");
        let c = super::scripts::evalsha(super::scripts::ScriptId::Settle, &["k"], ["a"]);
        assert_eq!(script_file(&c), Some("settle.lua"));
        assert_eq!(display_name(&c), "EVALSHA");
    }
}
