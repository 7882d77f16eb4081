//! `taskstream-load`: benchmarks that print numbers, never pass/fail on timing.
//!
//! Every figure is printed beside a baseline measured in the same run on the same Redis,
//! so the ratio holds on a noisy shared machine:
//!
//! - `throughput`: N no-op tasks end to end (producer, workers and Redis on this machine),
//!   p50/p99 enqueue→start latency, and the server-side bound of a task's lifecycle
//!   (`../shared/bench/lifecycle-bound.lua`, timed inside Redis) with the ratio of the two.
//! - `memory`: worker RSS after 100k and after 1M tasks processed.
//! - `recovery`: SIGKILL a `taskstream worker` holding a task, 20 times; delay from the kill
//!   to re-delivery on the surviving worker (p50/p99).
//!
//! Run with `cargo run --release --bin taskstream-load -- <mode>`; see load-tests/README.md.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use taskstream::config::{Config, QueueConfig};
use taskstream::handler::{handler_fn, Registry, TaskContext};
use taskstream::producer::{NewTask, Producer};

#[derive(Parser)]
#[command(
    name = "taskstream-load",
    about = "taskstream benchmarks (numbers, not assertions)"
)]
struct Cli {
    /// Use this Redis instead of starting a private redis-server.
    #[arg(long, global = true)]
    redis_url: Option<String>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// End-to-end throughput and latency vs. the in-run Lua lifecycle bound.
    Throughput {
        /// Tasks.
        #[arg(long, default_value_t = 200_000)]
        tasks: usize,
        /// Worker concurrency.
        #[arg(long, default_value_t = 512)]
        concurrency: usize,
        /// Path of lifecycle-bound.lua.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/bench/lifecycle-bound.lua"))]
        bound_script: PathBuf,
    },
    /// Worker memory after 100k and 1M tasks.
    Memory {
        /// Tasks in all.
        #[arg(long, default_value_t = 1_000_000)]
        tasks: usize,
    },
    /// Re-delivery delay after SIGKILL of the worker holding a task.
    Recovery {
        /// Kills.
        #[arg(long, default_value_t = 20)]
        kills: usize,
    },
}

struct PrivateRedis {
    child: Child,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Result<(String, PrivateRedis)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("taskstream-load-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .context("redis-server must be installed")?;
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(c) = redis::Client::open(url.as_str()) {
            if let Ok(mut conn) = c.get_connection() {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    break;
                }
            }
        }
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((
        url,
        PrivateRedis {
            child,
            _dir: tempdir::Dir(dir),
        },
    ))
}

fn micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn base_config(url: &str, queue: &str, concurrency: usize) -> Config {
    let mut c = Config::default();
    c.redis.url = url.into();
    c.http.listen = String::new();
    c.worker.read_count = 512;
    c.worker.ack_batch = 1024;
    c.queues = vec![QueueConfig {
        name: queue.into(),
        concurrency,
        express_concurrency: (concurrency / 16).max(1),
        ..Default::default()
    }];
    c
}

/// Times lifecycle-bound.lua for `n` tasks inside Redis (one EVAL: no network per task).
async fn lua_bound(url: &str, script: &PathBuf, n: usize) -> Result<f64> {
    let src =
        std::fs::read_to_string(script).with_context(|| format!("reading {}", script.display()))?;
    let client = redis::Client::open(url)?;
    let mut conn = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(120))),
        )
        .await?;
    let key = "bench:{lifecycle}";
    let _: () = redis::cmd("DEL").arg(key).query_async(&mut conn).await?;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await?;
    let t = Instant::now();
    let done: u64 = redis::cmd("EVAL")
        .arg(&src)
        .arg(1)
        .arg(key)
        .arg(n)
        .query_async(&mut conn)
        .await?;
    let secs = t.elapsed().as_secs_f64();
    let _: () = redis::cmd("DEL").arg(key).query_async(&mut conn).await?;
    if done as usize != n {
        bail!("lifecycle-bound.lua processed {done} of {n}");
    }
    Ok(n as f64 / secs)
}

/// Runs `n` no-op tasks end to end in this process; returns (tasks/s, latencies in ms).
async fn end_to_end(
    url: &str,
    n: usize,
    concurrency: usize,
    queue: &str,
) -> Result<(f64, Vec<f64>, Vec<(u64, u64)>)> {
    let cfg = base_config(url, queue, concurrency);
    let done = Arc::new(AtomicU64::new(0));
    let lat: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let rss: Arc<Mutex<Vec<(u64, u64)>>> = Default::default();
    let (d2, l2, r2) = (done.clone(), lat.clone(), rss.clone());
    let mut reg = Registry::new();
    reg.register(
        "noop",
        handler_fn(move |ctx: TaskContext| {
            let t: u64 = ctx
                .payload_str()
                .trim_start_matches("{\"t\":")
                .trim_end_matches('}')
                .parse()
                .unwrap_or(0);
            let ms = micros().saturating_sub(t) as f64 / 1000.0;
            let k = d2.fetch_add(1, Ordering::Relaxed) + 1;
            if k % 64 == 0 {
                l2.lock().unwrap().push(ms);
            }
            if k == 100_000 || k == n as u64 || (k % 250_000 == 0) {
                r2.lock().unwrap().push((k, rss_kib()));
            }
            async { Ok(serde_json::Value::Null) }
        }),
    );
    let stop = CancellationToken::new();
    let worker = taskstream::worker::Worker::new(cfg.clone(), reg);
    let wj = tokio::spawn(worker.run(stop.clone()));
    // Let the worker create its group and start reading.
    let p = Producer::connect(&cfg).await?;
    let mut conn = p.connection();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !taskstream::health::groups_ready() {
        if Instant::now() > deadline {
            bail!("worker did not start");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = Instant::now();
    // Two producers, pipelined batches of 500: enqueue runs alongside processing.
    let per = n / 2;
    let mut prods = Vec::new();
    for k in 0..2 {
        let p = p.clone();
        let q = queue.to_string();
        let count = if k == 0 { per } else { n - per };
        prods.push(tokio::spawn(async move {
            let mut left = count;
            while left > 0 {
                let b = left.min(500);
                let batch: Vec<NewTask> = (0..b)
                    .map(|_| NewTask::raw(q.clone(), "noop", format!("{{\"t\":{}}}", micros())))
                    .collect();
                p.enqueue_batch(batch).await?;
                left -= b;
            }
            anyhow::Ok(())
        }));
    }
    for j in prods {
        j.await??;
    }
    let enq = t0.elapsed();
    while done.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.cancel();
    wj.await??;
    let len: u64 = redis::cmd("XLEN")
        .arg(format!("ts:{{{queue}}}:stream"))
        .query_async(&mut conn)
        .await?;
    println!("  enqueue phase {:.2} s; XLEN after the run: {len} (bounded: only backlog and in-flight stay)", enq.as_secs_f64());
    let l = std::mem::take(&mut *lat.lock().unwrap());
    let r = std::mem::take(&mut *rss.lock().unwrap());
    Ok((n as f64 / secs, l, r))
}

async fn throughput(url: &str, tasks: usize, concurrency: usize, script: &PathBuf) -> Result<()> {
    println!("throughput: {tasks} no-op tasks, concurrency {concurrency}, producer + worker + Redis on this machine ({} cores)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    let bound1 = lua_bound(url, script, tasks).await?;
    let (tps, mut lat, _) = end_to_end(url, tasks, concurrency, "bench").await?;
    let bound2 = lua_bound(url, script, tasks).await?;
    let bound = (bound1 + bound2) / 2.0;
    println!("  end to end:        {tps:>10.0} tasks/s");
    println!(
        "  enqueue→start:     p50 {:.2} ms, p99 {:.2} ms (sampled 1 in 64)",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    println!("  Lua lifecycle bound: {bound:>8.0} tasks/s (before {bound1:.0}, after {bound2:.0}; inside Redis, same server)");
    println!("  ratio to bound:    {:>10.3}", tps / bound);
    println!("RESULT throughput_tasks_per_s={tps:.0} bound_tasks_per_s={bound:.0} ratio={:.3} p50_ms={:.2} p99_ms={:.2}", tps / bound, pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    Ok(())
}

async fn memory(url: &str, tasks: usize) -> Result<()> {
    println!("memory: {tasks} no-op tasks through one in-process worker");
    let (tps, _, rss) = end_to_end(url, tasks, 256, "mem").await?;
    for (k, r) in &rss {
        println!("  after {k:>8} tasks: RSS {:>7} KiB", r);
    }
    if let (Some(a), Some(b)) = (rss.first(), rss.last()) {
        println!(
            "RESULT rss_100k_kib={} rss_end_kib={} change={:+.1}% throughput={tps:.0}",
            a.1,
            b.1,
            (b.1 as f64 / a.1 as f64 - 1.0) * 100.0
        );
    }
    Ok(())
}

fn taskstream_bin() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name("taskstream");
    if !p.exists() {
        bail!(
            "{} not found: build it first (cargo build --release)",
            p.display()
        );
    }
    Ok(p)
}

fn spawn_worker(bin: &PathBuf, cfg: &PathBuf, name: &str) -> Result<Child> {
    Ok(Command::new(bin)
        .args(["worker", "--config"])
        .arg(cfg)
        .env("TASKSTREAM_CONSUMER_NAME", name)
        .env("TASKSTREAM_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

async fn recovery(url: &str, kills: usize) -> Result<()> {
    println!("recovery: SIGKILL the worker holding a task, {kills} times; default recovery settings (beat 500 ms, lapse 1.5 s, loop 250 ms)");
    let bin = taskstream_bin()?;
    let dir = std::env::temp_dir().join(format!("taskstream-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("w.toml");
    std::fs::write(&cfg, format!("[redis]\nurl = \"{url}\"\n[worker]\nbuiltin_handlers = true\n[http]\nlisten = \"\"\n[[queues]]\nname = \"rec\"\nconcurrency = 4\nexpress_concurrency = 1\n"))?;
    let client = redis::Client::open(url)?;
    let mut conn = client.get_connection()?;
    let mut survivor = spawn_worker(&bin, &cfg, "survivor")?;
    let mut delays = Vec::new();
    for i in 0..kills {
        // Only the victim runs while the task is enqueued, so it surely holds it.
        let _ = survivor.kill();
        let _ = survivor.wait();
        let mut victim = spawn_worker(&bin, &cfg, &format!("victim-{i}"))?;
        let log = format!("reclog:{i}");
        let payload = format!(r#"{{"key":"recexec","ms":5000,"log":"{log}"}}"#);
        let _: String = redis::cmd("XADD")
            .arg("ts:{rec}:stream")
            .arg("*")
            .arg("type")
            .arg("builtin.record")
            .arg("payload")
            .arg(&payload)
            .query(&mut conn)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while redis::cmd("LLEN").arg(&log).query::<u64>(&mut conn)? < 1 {
            if Instant::now() > deadline {
                bail!("victim never started the task");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        survivor = spawn_worker(&bin, &cfg, &format!("survivor-{i}"))?;
        // Let the survivor come up and beat before the kill.
        std::thread::sleep(Duration::from_millis(800));
        let killed_at = taskstream::task::now_ms();
        victim.kill()?;
        victim.wait()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while redis::cmd("LLEN").arg(&log).query::<u64>(&mut conn)? < 2 {
            if Instant::now() > deadline {
                bail!("task not re-delivered within 30 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let second: String = redis::cmd("LINDEX").arg(&log).arg(1).query(&mut conn)?;
        let at: u64 = second.rsplit(' ').next().unwrap_or("0").parse()?;
        let d = at.saturating_sub(killed_at) as f64;
        println!("  kill {:>2}: re-delivered after {d:>6.0} ms", i + 1);
        delays.push(d);
    }
    let _ = survivor.kill();
    let _ = survivor.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "RESULT recovery_p50_ms={:.0} recovery_p99_ms={:.0} max_ms={:.0} kills={kills}",
        pct(&mut delays, 0.5),
        pct(&mut delays, 0.99),
        pct(&mut delays, 1.0)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let (url, _guard) = match cli.redis_url {
        Some(u) => (u, None),
        None => {
            let (u, g) = start_redis()?;
            (u, Some(g))
        }
    };
    match cli.mode {
        Mode::Throughput {
            tasks,
            concurrency,
            bound_script,
        } => throughput(&url, tasks, concurrency, &bound_script).await,
        Mode::Memory { tasks } => memory(&url, tasks).await,
        Mode::Recovery { kills } => recovery(&url, kills).await,
    }
}
