//! `taskstream-load`: benchmarks that print numbers, never pass/fail on timing.
//!
//! Every figure is printed beside a baseline measured in the same run on the same Redis,
//! so the ratio holds on a noisy shared machine:
//!
//! - `throughput`: N no-op tasks end to end (producer, workers and Redis on this machine),
//!   p50/p99 enqueue→start latency, and the server-side bound of a task's lifecycle
//!   (`../shared/bench/lifecycle-bound.lua`, timed inside Redis) with the ratio of the two.
//!   A copy of that script is embedded (`load-tests/lifecycle-bound.lua`): the default used
//!   to be a path compiled in from the build machine, which did not exist anywhere else
//!   (issue 19); `--bound-script` still runs another file.
//!
//! On a Redis given with `--redis-url`, every key a run created (`ts:*`, `bench:*`) is
//! deleted when it ends, so a benchmark leaves nothing behind.
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

/// The `taskstream` binary's allocator (`src/main.rs`), so in-process figures are the
/// binary's.
#[global_allocator]
static GLOBAL: taskstream::cli::Allocator = taskstream::cli::Allocator;

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
        /// Another lifecycle bound script to run (default: the embedded copy of
        /// ../shared/bench/lifecycle-bound.lua).
        #[arg(long)]
        bound_script: Option<PathBuf>,
    },
    /// Worker memory after 100k and 1M tasks.
    Memory {
        /// Tasks in all.
        #[arg(long, default_value_t = 1_000_000)]
        tasks: usize,
    },
    /// Express latency behind a saturated bulk lane, and bulk throughput with and without
    /// 5% express traffic.
    Express {
        /// Bulk backlog before the express traffic starts.
        #[arg(long, default_value_t = 20_000)]
        backlog: usize,
        /// Express tasks.
        #[arg(long, default_value_t = 200)]
        express: usize,
        /// Pairs of bulk-alone and with-express runs (the order alternates per round).
        #[arg(long, default_value_t = 4)]
        rounds: usize,
    },
    /// Four-step sagas per second with no-op steps, and rollback latency (step failure →
    /// rolled_back, three compensations) under that load.
    Saga {
        /// Sagas.
        #[arg(long, default_value_t = 10_000)]
        sagas: usize,
        /// Sagas started per second (paced, so latency is measured under load, not
        /// behind a burst).
        #[arg(long, default_value_t = 2_000)]
        rate: usize,
        /// Every n-th saga fails at its last step and rolls back three compensations.
        #[arg(long, default_value_t = 10)]
        fail_every: usize,
    },
    /// End-to-end throughput with `redis.wait_replicas = 1` against 0, on a private master
    /// with one replica, alternated over rounds (the cost of surviving a failover).
    Durability {
        /// Tasks per round.
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Rounds of each setting.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// Redis Cluster: standalone vs a 1-master cluster (the client cost of cluster mode),
    /// then 1, 2 and 3 masters with a queue of 3 partitions; tasks/s and CPU-µs per task
    /// for Redis and for the client (producer + worker in this process).
    Cluster {
        /// Tasks per run.
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Rounds (the setups are interleaved within each; medians are reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The control plane: API enqueue throughput (single over keep-alive and batches)
    /// against the library producer doing the same in the same run, and what the
    /// dashboard's calls cost with 10,000 queued tasks and 100,000 dead letters (latency
    /// p50/p99 and Redis CPU per call).
    Api {
        /// Enqueue requests (single) and tasks (batches).
        #[arg(long, default_value_t = 20_000)]
        tasks: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Dead letters to search.
        #[arg(long, default_value_t = 100_000)]
        dead_letters: usize,
    },
    /// Enqueue → handler start latency under paced load (issue 14.4): the capacity of a
    /// flood first, then producers paced at 10%, 50% and 90% of it; every task's latency,
    /// measured from its scheduled send time (no coordinated omission).
    Latency {
        /// Tasks of the capacity flood.
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Seconds each paced rate runs.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Worker concurrency.
        #[arg(long, default_value_t = 512)]
        concurrency: usize,
    },
    /// Throughput and CPU per task against payload size (22 B, 1 KiB, 16 KiB), Redis
    /// memory per 100,000 queued tasks of each size, and end-to-end throughput with one
    /// and two `taskstream worker` processes (issue 14.5).
    Sizes {
        /// Tasks per run (the 16 KiB run takes a fifth of them).
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
    },
    /// Throughput with task records (`result_ttl_secs`) off and on, alternated, and the
    /// Redis memory the records take (issue 13.2).
    Results {
        /// Tasks per run.
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Rounds (off then on, the order swapped every round; medians reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Throughput with per-key limits (`max_per_key`, issue 13.3) against the same tasks
    /// without: no keys; 1,000 keys with a cap that never binds (the price of the lease);
    /// 100 keys with cap 2, far below the concurrency (tasks park and take turns).
    /// Alternated over rounds; medians reported.
    Keys {
        /// Tasks per run.
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The cost of span export (`[tracing] otlp_endpoint`): end-to-end runs with export
    /// off, on with every trace sampled, and on at 1%, each in a fresh child process
    /// (export is set up once per process), alternated over rounds, against a null OTLP
    /// collector in this process; tasks/s, client CPU-µs per task, spans exported/dropped.
    Trace {
        /// Tasks per run.
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Rounds (off, on, 1% in each; medians reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// One end-to-end run in this process with span export as given (a child of `trace`;
    /// also what `load-tests/instructions.sh` counts under callgrind).
    #[command(hide = true)]
    TraceRun {
        /// Tasks.
        #[arg(long)]
        tasks: usize,
        /// The collector; none: export off.
        #[arg(long)]
        otlp: Option<String>,
        /// `[tracing] sample_ratio`.
        #[arg(long, default_value_t = 1.0)]
        ratio: f64,
    },
    /// The scheduler's cost per tick (issue 13): worker processes run it with no schedule
    /// and with many firing every second; client and Redis CPU per tick fired.
    Schedule {
        /// Schedules, each every 1 s.
        #[arg(long, default_value_t = 200)]
        schedules: usize,
        /// Seconds measured.
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// Worker processes running the scheduler (each tick is claimed by one of them).
        #[arg(long, default_value_t = 2)]
        replicas: usize,
    },
    /// Re-delivery delay after SIGKILL of the worker holding a task.
    Recovery {
        /// Kills.
        #[arg(long, default_value_t = 20)]
        kills: usize,
    },
}

fn micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The enqueue timestamp (µs) a benchmark task carries as its payload `{"t":N}`.
fn sent_micros(ctx: &TaskContext) -> u64 {
    // {"t":<µs>…}: the digits after the first "t":.
    let p = ctx.payload_str();
    p.find("\"t\":")
        .map(|i| &p[i + 4..])
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
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

/// The lifecycle bound script, embedded (a copy of ../shared/bench/lifecycle-bound.lua).
const BOUND_SCRIPT: &str = include_str!("lifecycle-bound.lua");

/// Key patterns a benchmark run may create.
const RUN_KEYS: [&str; 2] = ["ts:*", "bench:*"];

/// Every key matching [`RUN_KEYS`] now.
async fn run_keys(url: &str) -> Result<std::collections::HashSet<Vec<u8>>> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let mut keys = std::collections::HashSet::new();
    for pattern in RUN_KEYS {
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(keys)
}

/// Deletes the keys matching [`RUN_KEYS`] that were not there `before` the run.
async fn remove_run_keys(url: &str, before: &std::collections::HashSet<Vec<u8>>) -> Result<usize> {
    let created: Vec<Vec<u8>> = run_keys(url)
        .await?
        .into_iter()
        .filter(|k| !before.contains(k))
        .collect();
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    for chunk in created.chunks(500) {
        let _: () = redis::cmd("UNLINK")
            .arg(chunk)
            .query_async(&mut conn)
            .await?;
    }
    Ok(created.len())
}

/// Times lifecycle-bound.lua for `n` tasks inside Redis (one EVAL: no network per task).
async fn lua_bound(url: &str, script: Option<&PathBuf>, n: usize) -> Result<f64> {
    let src = match script {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => BOUND_SCRIPT.to_string(),
    };
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
    wait_replicas: u32,
) -> Result<(f64, Vec<f64>, Vec<(u64, u64)>)> {
    let mut cfg = base_config(url, queue, concurrency);
    cfg.redis.wait_replicas = wait_replicas;
    end_to_end_cfg(cfg, n, queue).await
}

/// [`end_to_end`] with a prepared configuration (its first queue is `queue`).
async fn end_to_end_cfg(
    cfg: Config,
    n: usize,
    queue: &str,
) -> Result<(f64, Vec<f64>, Vec<(u64, u64)>)> {
    end_to_end_padded(cfg, n, queue, 0).await
}

/// [`end_to_end_cfg`] with `pad` bytes of filler in every payload.
async fn end_to_end_padded(
    cfg: Config,
    n: usize,
    queue: &str,
    pad: usize,
) -> Result<(f64, Vec<f64>, Vec<(u64, u64)>)> {
    end_to_end_keyed(cfg, n, queue, pad, 0).await
}

/// [`end_to_end_padded`] with task `i` given group key `k<i mod keys>` (none when `keys`
/// is 0).
async fn end_to_end_keyed(
    cfg: Config,
    n: usize,
    queue: &str,
    pad: usize,
    keys: usize,
) -> Result<(f64, Vec<f64>, Vec<(u64, u64)>)> {
    let filler: Arc<str> = "x".repeat(pad).into();
    let done = Arc::new(AtomicU64::new(0));
    let lat: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let rss: Arc<Mutex<Vec<(u64, u64)>>> = Default::default();
    let (d2, l2, r2) = (done.clone(), lat.clone(), rss.clone());
    let mut reg = Registry::new();
    reg.register(
        "noop",
        handler_fn(move |ctx: TaskContext| {
            let t = sent_micros(&ctx);
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
        let filler = filler.clone();
        let count = if k == 0 { per } else { n - per };
        prods.push(tokio::spawn(async move {
            let mut left = count;
            while left > 0 {
                let b = left.min(500);
                let batch: Vec<NewTask> = (0..b)
                    .map(|i| {
                        let payload = if filler.is_empty() {
                            format!("{{\"t\":{}}}", micros())
                        } else {
                            format!("{{\"t\":{},\"p\":\"{filler}\"}}", micros())
                        };
                        let t = NewTask::raw(q.clone(), "noop", payload);
                        match keys {
                            0 => t,
                            _ => t.group_key(format!("k{}", (left + i) % keys)),
                        }
                    })
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

async fn throughput(
    url: &str,
    tasks: usize,
    concurrency: usize,
    script: Option<&PathBuf>,
) -> Result<()> {
    println!("throughput: {tasks} no-op tasks, concurrency {concurrency}, producer + worker + Redis on this machine ({} cores)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    let bound1 = lua_bound(url, script, tasks).await?;
    let (tps, mut lat, _) = end_to_end(url, tasks, concurrency, "bench", 0).await?;
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

/// CPU time (user + system) of process `pid` so far, in µs (`/proc/PID/stat`).
fn cpu_micros(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks * 10_000 // USER_HZ is 100 on Linux
}

/// A private cluster of `masters` masters without replicas, slots split evenly, built by
/// hand (`redis-cli --cluster create` wants three masters at least).
struct BenchCluster {
    nodes: Vec<(u16, Child)>,
    dir: PathBuf,
}

impl BenchCluster {
    fn start(masters: usize) -> Result<BenchCluster> {
        let dir =
            std::env::temp_dir().join(format!("ts-bench-cluster-{}-{masters}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut nodes = Vec::new();
        while nodes.len() < masters {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            if port > 55000 || std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_err() {
                continue;
            }
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
                ])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                ])
                .args(["--maxmemory-policy", "noeviction"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .spawn()
                .context("redis-server must be installed")?;
            nodes.push((port, child));
        }
        let c = BenchCluster { nodes, dir };
        let conn = |port: u16| -> Result<redis::Connection> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(c) =
                    redis::Client::open(format!("redis://127.0.0.1:{port}"))?.get_connection()
                {
                    return Ok(c);
                }
                if Instant::now() > deadline {
                    bail!("cluster node {port} did not start");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let per = 16384 / masters;
        for (i, (port, _)) in c.nodes.iter().enumerate() {
            let mut k = conn(*port)?;
            let lo = i * per;
            let hi = if i + 1 == masters {
                16383
            } else {
                lo + per - 1
            };
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(lo)
                .arg(hi)
                .query(&mut k)?;
            if i > 0 {
                let _: () = redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(c.nodes[0].0)
                    .query(&mut k)?;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut ok = true;
            for (port, _) in &c.nodes {
                let mut k = conn(*port)?;
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut k)?;
                let known: String = redis::cmd("CLUSTER").arg("NODES").query(&mut k)?;
                ok &= info.contains("cluster_state:ok") && known.lines().count() == masters;
            }
            if ok {
                return Ok(c);
            }
            if Instant::now() > deadline {
                bail!("cluster of {masters} did not come up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    fn cpu_micros(&self) -> u64 {
        self.nodes
            .iter()
            .map(|(_, c)| cpu_micros(&c.id().to_string()))
            .sum()
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One measured run: (tasks/s, Redis µs per task, client µs per task).
async fn measured(
    cfg: Config,
    n: usize,
    queue: &str,
    redis_cpu: &dyn Fn() -> u64,
) -> Result<(f64, f64, f64)> {
    let (r0, c0) = (redis_cpu(), cpu_micros("self"));
    let (tps, _, _) = end_to_end_cfg(cfg, n, queue).await?;
    let (r1, c1) = (redis_cpu(), cpu_micros("self"));
    Ok((
        tps,
        (r1 - r0) as f64 / n as f64,
        (c1 - c0) as f64 / n as f64,
    ))
}

async fn cluster_bench(url: &str, tasks: usize, rounds: usize) -> Result<()> {
    println!("cluster: {tasks} no-op tasks per run, {rounds} rounds with the setups interleaved (medians), producer + worker in this process, every Redis on this machine ({} cores)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    // The standalone server: its pid from INFO.
    let mut c = redis::Client::open(url)?.get_connection()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut c)?;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap_or("0")
        .trim()
        .to_string();
    let setups = [(1usize, 1u32), (1, 3), (2, 3), (3, 3)];
    let clusters: Vec<BenchCluster> = setups
        .iter()
        .map(|(m, _)| BenchCluster::start(*m))
        .collect::<Result<_>>()?;
    let mut names = vec!["standalone, 1 partition".to_string()];
    names.extend(
        setups
            .iter()
            .map(|(m, p)| format!("cluster, {m} master(s), {p} partition(s)")),
    );
    let mut runs: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); names.len()];
    for round in 0..rounds {
        let q = format!("cl-single-{round}");
        let single = || cpu_micros(&pid);
        runs[0].push(measured(base_config(url, &q, 512), tasks, &q, &single).await?);
        for (i, ((masters, partitions), cl)) in setups.iter().zip(&clusters).enumerate() {
            let q = format!("cl-{masters}m{partitions}p-{round}");
            let mut cfg = base_config(url, &q, 512);
            cfg.redis.url = taskstream::config::DEFAULT_REDIS_URL.into();
            cfg.redis.cluster_nodes = cl.urls();
            cfg.queues[0].partitions = *partitions;
            let cpu = || cl.cpu_micros();
            runs[i + 1].push(measured(cfg, tasks, &q, &cpu).await?);
        }
    }
    let median = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(|a, b| a.total_cmp(b));
        x[x.len() / 2]
    };
    println!(
        "  {:<40} {:>10} {:>14} {:>15}   tasks/s of each round",
        "setup", "tasks/s", "Redis µs/task", "client µs/task"
    );
    let mut med = Vec::new();
    for (name, r) in names.iter().zip(&runs) {
        let (t, rc, cc) = (median(r, |x| x.0), median(r, |x| x.1), median(r, |x| x.2));
        let each: Vec<String> = r.iter().map(|x| format!("{:.0}", x.0)).collect();
        println!(
            "  {name:<40} {t:>10.0} {rc:>14.2} {cc:>15.2}   {}",
            each.join(" ")
        );
        med.push(t);
    }
    println!(
        "RESULT standalone={:.0} cluster1m1p={:.0} overhead={:.3} cluster1m3p={:.0} cluster2m3p={:.0} cluster3m3p={:.0}",
        med[0],
        med[1],
        1.0 - med[1] / med[0],
        med[2],
        med[3],
        med[4]
    );
    Ok(())
}

/// A replica of the Redis at `url` (a private `redis-server --replicaof`), in sync.
fn start_replica(url: &str) -> Result<Child> {
    let master_port = url
        .rsplit(':')
        .next()
        .unwrap_or("6379")
        .trim_end_matches('/')
        .to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
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
        ])
        .args(["--replicaof", "127.0.0.1", &master_port])
        .stdout(Stdio::null())
        .spawn()
        .context("redis-server must be installed")?;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = client.get_connection() {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut c)?;
            if info.contains("master_link_status:up") {
                return Ok(child);
            }
        }
        if Instant::now() > deadline {
            bail!("the replica did not sync within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn durability(url: &str, tasks: usize, rounds: usize) -> Result<()> {
    println!("durability: {tasks} no-op tasks per round, master + 1 replica on this machine, wait_replicas 0 and 1 alternated");
    let mut replica = start_replica(url)?;
    let mut figures: Vec<(u32, f64, f64)> = Vec::new();
    for r in 0..rounds {
        for wait in [0u32, 1] {
            let q = format!("dur{r}w{wait}");
            let (tps, mut lat, _) = end_to_end(url, tasks, 512, &q, wait).await?;
            let p99 = pct(&mut lat, 0.99);
            println!("  round {r} wait_replicas={wait}: {tps:>9.0} tasks/s, enqueue→start p99 {p99:.2} ms");
            figures.push((wait, tps, p99));
        }
    }
    let _ = replica.kill();
    let _ = replica.wait();
    let med = |w: u32| {
        let mut v: Vec<f64> = figures.iter().filter(|f| f.0 == w).map(|f| f.1).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (off, on) = (med(0), med(1));
    println!(
        "RESULT wait0_tasks_per_s={off:.0} wait1_tasks_per_s={on:.0} ratio={:.3}",
        on / off
    );
    Ok(())
}

async fn results_bench(url: &str, tasks: usize, rounds: usize) -> Result<()> {
    println!("results: {tasks} no-op tasks per run, concurrency 512, result_ttl_secs off and on alternated (on: a record per task, written in the settler's batches)");
    let mut figures: Vec<(bool, f64, f64)> = Vec::new();
    let mut mem_per_task = Vec::new();
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            let q = format!("res{r}{}", if on { "on" } else { "off" });
            let mut cfg = base_config(url, &q, 512);
            cfg.queues[0].result_ttl_secs = on.then_some(600);
            let (_, before) = redis_info(url)?;
            let (tps, mut lat, _) = end_to_end_cfg(cfg, tasks, &q).await?;
            let (_, after) = redis_info(url)?;
            let p99 = pct(&mut lat, 0.99);
            println!(
                "  round {r} results {}: {tps:>9.0} tasks/s, enqueue→start p99 {p99:.2} ms, Redis memory {:+.1} MiB",
                if on { "on " } else { "off" },
                (after as f64 - before as f64) / 1048576.0
            );
            if on {
                mem_per_task.push((after as f64 - before as f64) / tasks as f64);
            }
            figures.push((on, tps, p99));
        }
    }
    let med = |on: bool, i: usize| {
        let mut v: Vec<f64> = figures
            .iter()
            .filter(|f| f.0 == on)
            .map(|f| if i == 1 { f.1 } else { f.2 })
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (off, on) = (med(false, 1), med(true, 1));
    mem_per_task.sort_by(|a, b| a.total_cmp(b));
    let bytes = mem_per_task[mem_per_task.len() / 2];
    println!(
        "  records: {bytes:.0} bytes of Redis memory per task kept (record + doorbell, median)"
    );
    println!(
        "RESULT results_off_tasks_per_s={off:.0} results_on_tasks_per_s={on:.0} ratio={:.3} p99_off_ms={:.2} p99_on_ms={:.2} bytes_per_record={bytes:.0}",
        on / off,
        med(false, 2),
        med(true, 2)
    );
    Ok(())
}

async fn keys_bench(url: &str, tasks: usize, rounds: usize) -> Result<()> {
    println!("keys: {tasks} no-op tasks per run, concurrency 512; no group keys / 1000 keys, cap 64 (never binds) / 100 keys, cap 2 (binds: tasks park and take turns), rotated");
    let variants: [(&str, usize, Option<u32>); 3] = [
        ("none", 0, None),
        ("loose", 1_000, Some(64)),
        ("tight", 100, Some(2)),
    ];
    let mut figures: Vec<(usize, f64, f64)> = Vec::new();
    for r in 0..rounds {
        for k in 0..variants.len() {
            let v = (k + r) % variants.len();
            let (name, keys, cap) = variants[v];
            let q = format!("keys{r}{name}");
            let mut cfg = base_config(url, &q, 512);
            cfg.queues[0].max_per_key = cap;
            let (tps, mut lat, _) = end_to_end_keyed(cfg, tasks, &q, 0, keys).await?;
            let p99 = pct(&mut lat, 0.99);
            println!("  round {r} {name:<5}: {tps:>9.0} tasks/s, enqueue→start p99 {p99:.2} ms");
            figures.push((v, tps, p99));
        }
    }
    let med = |v: usize| {
        let mut t: Vec<f64> = figures.iter().filter(|f| f.0 == v).map(|f| f.1).collect();
        t.sort_by(|a, b| a.total_cmp(b));
        t[t.len() / 2]
    };
    let (none, loose, tight) = (med(0), med(1), med(2));
    println!(
        "RESULT none_tasks_per_s={none:.0} loose_tasks_per_s={loose:.0} tight_tasks_per_s={tight:.0} loose_ratio={:.3} tight_ratio={:.3}",
        loose / none,
        tight / none
    );
    Ok(())
}

/// Redis CPU so far (user + system), in µs, from `INFO cpu`.
fn redis_cpu_micros(url: &str) -> Result<u64> {
    let mut c = redis::Client::open(url)?.get_connection()?;
    let info: String = redis::cmd("INFO").arg("cpu").query(&mut c)?;
    let field = |k: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok(((field("used_cpu_user:") + field("used_cpu_sys:")) * 1e6) as u64)
}

async fn schedule_bench(url: &str, schedules: usize, secs: u64, replicas: usize) -> Result<()> {
    println!("schedule: {replicas} worker processes run the scheduler for {secs} s, with no schedule and with {schedules} schedules every 1 s (ticks to a queue nobody reads); CPU per tick = (CPU with - CPU without) / ticks fired");
    let bin = taskstream_bin()?;
    let dir = std::env::temp_dir().join(format!("taskstream-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let mut figures = Vec::new();
    for (round, n) in [0usize, schedules].into_iter().enumerate() {
        let mut toml = format!("[redis]\nurl = \"{url}\"\n[http]\nlisten = \"\"\n[[queues]]\nname = \"schedidle{round}\"\nconcurrency = 4\nexpress_concurrency = 1\n");
        for i in 0..n {
            toml.push_str(&format!("[[schedules]]\nname = \"bench-r{round}-{i}\"\nevery = \"1s\"\nqueue = \"schedsink\"\ntype = \"noop\"\n"));
        }
        let cfg = dir.join(format!("s{round}.toml"));
        std::fs::write(&cfg, toml)?;
        let mut procs = Vec::new();
        for r in 0..replicas {
            procs.push(spawn_worker(
                &bin,
                &cfg,
                &format!("sched-{round}-{r}"),
                &dir,
            )?);
        }
        // Let them start and write the definitions before measuring.
        std::thread::sleep(Duration::from_secs(3));
        let fired = |c: &mut redis::Connection| -> Result<u64> {
            let mut total = 0;
            for i in 0..n {
                let f: Option<u64> = redis::cmd("HGET")
                    .arg(format!("ts:{{schedsink}}:schedule:bench-r{round}-{i}"))
                    .arg("fired")
                    .query(c)?;
                total += f.unwrap_or(0);
            }
            Ok(total)
        };
        let pids: Vec<String> = procs.iter().map(|p| p.id().to_string()).collect();
        let (c0, r0, f0) = (
            pids.iter().map(|p| cpu_micros(p)).sum::<u64>(),
            redis_cpu_micros(url)?,
            fired(&mut conn)?,
        );
        std::thread::sleep(Duration::from_secs(secs));
        let (c1, r1, f1) = (
            pids.iter().map(|p| cpu_micros(p)).sum::<u64>(),
            redis_cpu_micros(url)?,
            fired(&mut conn)?,
        );
        for mut p in procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        println!(
            "  {n:>4} schedules: {} ticks fired, workers {:.1} ms CPU/s, Redis {:.1} ms CPU/s",
            f1 - f0,
            (c1 - c0) as f64 / 1000.0 / secs as f64,
            (r1 - r0) as f64 / 1000.0 / secs as f64
        );
        figures.push((f1 - f0, c1 - c0, r1 - r0));
    }
    let _: () = redis::cmd("DEL").arg("ts:schedules").query(&mut conn)?;
    let (idle, busy) = (figures[0], figures[1]);
    let ticks = busy.0.max(1) as f64;
    let client = busy.1.saturating_sub(idle.1) as f64 / ticks;
    let redis_us = busy.2.saturating_sub(idle.2) as f64 / ticks;
    println!(
        "RESULT ticks={} ticks_per_s={:.0} client_cpu_us_per_tick={client:.0} redis_cpu_us_per_tick={redis_us:.0}",
        busy.0,
        busy.0 as f64 / secs as f64
    );
    Ok(())
}

async fn memory(url: &str, tasks: usize) -> Result<()> {
    println!("memory: {tasks} no-op tasks through one in-process worker");
    let (tps, _, rss) = end_to_end(url, tasks, 256, "mem", 0).await?;
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

fn spawn_worker(bin: &PathBuf, cfg: &PathBuf, name: &str, dir: &std::path::Path) -> Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    Ok(Command::new(bin)
        .args(["worker", "--config"])
        .arg(cfg)
        .env("TASKSTREAM_CONSUMER_NAME", name)
        .env("TASKSTREAM_LOG_LEVEL", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

async fn recovery(url: &str, kills: usize) -> Result<()> {
    println!("recovery: SIGKILL the worker holding a task, {kills} times; default recovery settings (beat 500 ms, lapse 1.5 s, loop 250 ms)");
    let bin = taskstream_bin()?;
    let dir = std::env::temp_dir().join(format!("taskstream-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let client = redis::Client::open(url)?;
    let mut conn = client.get_connection()?;
    let mut delays = Vec::new();
    for i in 0..kills {
        // A queue per round, so rounds cannot disturb each other.
        let q = format!("rec{i}");
        let cfg = dir.join(format!("w{i}.toml"));
        std::fs::write(&cfg, format!("[redis]\nurl = \"{url}\"\n[worker]\nbuiltin_handlers = true\n[http]\nlisten = \"\"\n[[queues]]\nname = \"{q}\"\nconcurrency = 4\nexpress_concurrency = 1\n"))?;
        // Only the victim runs while the task is enqueued, so it surely holds it.
        let mut victim = spawn_worker(&bin, &cfg, &format!("victim-{i}"), &dir)?;
        let log = format!("reclog:{i}");
        let payload = format!(r#"{{"key":"recexec","ms":3000,"log":"{log}"}}"#);
        let _: String = redis::cmd("XADD")
            .arg(format!("ts:{{{q}}}:stream"))
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
        let mut survivor = spawn_worker(&bin, &cfg, &format!("survivor-{i}"), &dir)?;
        // Let the survivor come up and beat before the kill.
        std::thread::sleep(Duration::from_millis(800));
        let killed_at = taskstream::task::now_ms();
        victim.kill()?;
        victim.wait()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while redis::cmd("LLEN").arg(&log).query::<u64>(&mut conn)? < 2 {
            if Instant::now() > deadline {
                bail!(
                    "task not re-delivered within 30 s; worker logs in {}",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let second: String = redis::cmd("LINDEX").arg(&log).arg(1).query(&mut conn)?;
        let at: u64 = second.rsplit(' ').next().unwrap_or("0").parse()?;
        let d = at.saturating_sub(killed_at) as f64;
        println!("  kill {:>2}: re-delivered after {d:>6.0} ms", i + 1);
        delays.push(d);
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(survivor.id().to_string())
            .status();
        let _ = survivor.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "RESULT recovery_p50_ms={:.0} recovery_p99_ms={:.0} max_ms={:.0} kills={kills}",
        pct(&mut delays, 0.5),
        pct(&mut delays, 0.99),
        pct(&mut delays, 1.0)
    );
    Ok(())
}

/// Bulk throughput (tasks/s) of `n` 1 ms bulk tasks on 50 slots, with `express_every`
/// (0 = none) express tasks mixed in; returns (bulk tasks/s, express waits in ms).
async fn mixed_run(
    url: &str,
    queue: &str,
    n_bulk: usize,
    express_every: usize,
    backlog_first: bool,
) -> Result<(f64, Vec<f64>)> {
    let mut cfg = base_config(url, queue, 58);
    cfg.queues[0].express_concurrency = 8; // 50 bulk slots, 8 reserved for express
    let done = Arc::new(AtomicU64::new(0));
    let waits: Arc<Mutex<Vec<f64>>> = Default::default();
    let mut reg = Registry::new();
    let d2 = done.clone();
    reg.register(
        "bulk",
        handler_fn(move |_ctx: TaskContext| {
            let d = d2.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                d.fetch_add(1, Ordering::Relaxed);
                Ok(serde_json::Value::Null)
            }
        }),
    );
    let w2 = waits.clone();
    reg.register(
        "urgent",
        handler_fn(move |ctx: TaskContext| {
            let t = sent_micros(&ctx);
            w2.lock()
                .unwrap()
                .push(micros().saturating_sub(t) as f64 / 1000.0);
            async { Ok(serde_json::Value::Null) }
        }),
    );
    let p = Producer::connect(&cfg).await?;
    let bulk_task = || NewTask::raw(queue, "bulk", "{}");
    if backlog_first {
        for _ in 0..n_bulk / 1000 {
            p.enqueue_batch((0..1000).map(|_| bulk_task()).collect())
                .await?;
        }
    }
    let stop = CancellationToken::new();
    let wj = tokio::spawn(taskstream::worker::Worker::new(cfg.clone(), reg).run(stop.clone()));
    let t0 = Instant::now();
    if !backlog_first {
        for _ in 0..n_bulk / 1000 {
            p.enqueue_batch((0..1000).map(|_| bulk_task()).collect())
                .await?;
        }
    }
    let mut sent = 0;
    if let Some(n_express) = n_bulk.checked_div(express_every) {
        // Express traffic at 1/express_every of the bulk rate, spread over the run.
        while sent < n_express && done.load(Ordering::Relaxed) < n_bulk as u64 {
            let target = done.load(Ordering::Relaxed) as usize / express_every;
            while sent < target.min(n_express) {
                p.enqueue(
                    NewTask::raw(queue, "urgent", format!("{{\"t\":{}}}", micros())).express(),
                )
                .await?;
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    while done.load(Ordering::Relaxed) < n_bulk as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tps = n_bulk as f64 / t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while waits.lock().unwrap().len() < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    wj.await??;
    let w = std::mem::take(&mut *waits.lock().unwrap());
    Ok((tps, w))
}

async fn express_bench(url: &str, backlog: usize, express: usize, rounds: usize) -> Result<()> {
    println!("express: {backlog} bulk tasks of 1 ms on 50 bulk slots (+8 reserved express), express tasks enqueued behind the backlog");
    // 1. Latency: express tasks while every bulk slot is busy and the backlog is deep.
    let every = (backlog / express.max(1)).max(1);
    let (_, mut waits) = mixed_run(url, "expr1", backlog, every, true).await?;
    println!("  express wait (enqueue → handler start): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms over {} tasks", pct(&mut waits, 0.5), pct(&mut waits, 0.95), pct(&mut waits, 0.99), waits.len());
    // 2. Bulk throughput without and with 5% express traffic, in pairs whose order
    // alternates (alone first, then with express first), so neither setup always runs on
    // a warmer or a more tired machine.
    let (mut bases, mut withs, mut w5, mut pairs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let alone_first = r % 2 == 0;
        let mut base = 0.0;
        let mut with = 0.0;
        for k in 0..2 {
            if (k == 0) == alone_first {
                base = mixed_run(url, &format!("expr2r{r}"), backlog, 0, true)
                    .await?
                    .0;
            } else {
                let (t, w) = mixed_run(url, &format!("expr3r{r}"), backlog, 20, true).await?;
                with = t;
                w5.extend(w);
            }
        }
        let change = (with / base - 1.0) * 100.0;
        println!(
            "  round {} ({}): bulk alone {base:.0} tasks/s, with 5% express {with:.0} tasks/s ({change:+.1}%)",
            r + 1,
            if alone_first { "alone first" } else { "with express first" }
        );
        bases.push(base);
        withs.push(with);
        pairs.push(change);
    }
    let (base, with, change) = (
        pct(&mut bases, 0.5),
        pct(&mut withs, 0.5),
        pct(&mut pairs, 0.5),
    );
    println!("  median over {rounds} rounds: bulk alone {base:.0} tasks/s; with 5% express {with:.0} tasks/s; change within a round: median {change:+.1}% (range {:+.1}% to {:+.1}%); express p99 {:.2} ms there", pct(&mut pairs, 0.0), pct(&mut pairs, 1.0), pct(&mut w5, 0.99));
    println!("RESULT express_p50_ms={:.2} express_p95_ms={:.2} express_p99_ms={:.2} bulk_alone={base:.0} bulk_with_5pct_express={with:.0} change_pct={change:+.1} rounds={rounds}", pct(&mut waits, 0.5), pct(&mut waits, 0.95), pct(&mut waits, 0.99));
    Ok(())
}

async fn saga_bench(url: &str, n: usize, rate: usize, fail_every: usize) -> Result<()> {
    use taskstream::saga::definition::{SagaDef, StepDef};
    println!("saga: {n} four-step sagas with no-op steps, started at {rate}/s; every {fail_every}th fails at its last step (3 compensations)");
    let q = "sagabench";
    let def = SagaDef::builder("bench")
        .step(
            StepDef::new("s1", "bench.s1")
                .queue(q)
                .compensate("bench.c1"),
        )
        .step(
            StepDef::new("s2", "bench.s2")
                .queue(q)
                .compensate("bench.c2"),
        )
        .step(
            StepDef::new("s3", "bench.s3")
                .queue(q)
                .compensate("bench.c3"),
        )
        .step(StepDef::new("s4", "bench.s4").queue(q).max_attempts(1))
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let defs = vec![def];
    let mut cfg = base_config(url, q, 256);
    cfg.queues[0].express_concurrency = 32;
    let mut reg = Registry::new();
    for t in [
        "bench.s1", "bench.s2", "bench.s3", "bench.c1", "bench.c2", "bench.c3",
    ] {
        reg.register(
            t,
            handler_fn(|_ctx: TaskContext| async { Ok(serde_json::json!({})) }),
        );
    }
    reg.register(
        "bench.s4",
        handler_fn(|ctx: TaskContext| async move {
            if ctx.payload_str().contains("\"fail\":true") {
                Err(taskstream::HandlerError::permanent("asked to fail"))
            } else {
                Ok(serde_json::json!({}))
            }
        }),
    );
    let stop = CancellationToken::new();
    let wj = tokio::spawn(taskstream::worker::Worker::new(cfg.clone(), reg).run(stop.clone()));
    let oj =
        tokio::spawn(taskstream::saga::Orchestrator::new(&cfg, defs.clone()).run(stop.clone()));
    let mut conn = Producer::connect(&cfg).await?.connection();
    let t0 = Instant::now();
    let mut ids: Vec<(String, bool)> = Vec::with_capacity(n);
    let batch = (rate / 50).max(1); // every 20 ms
    let mut i = 0;
    while i < n {
        let k = batch.min(n - i);
        let inputs: Vec<serde_json::Value> = (i..i + k)
            .map(|j| serde_json::json!({"n": j, "fail": fail_every > 0 && j % fail_every == 0}))
            .collect();
        let fails: Vec<bool> = (i..i + k)
            .map(|j| fail_every > 0 && j % fail_every == 0)
            .collect();
        let got = taskstream::saga::ops::start_many(&mut conn, &defs, "bench", inputs).await?;
        ids.extend(got.into_iter().zip(fails));
        i += k;
        let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(d).await;
        }
    }
    // Wait for every saga to end.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let c = taskstream::saga::ops::counts(&mut conn).await?;
        let ended: u64 = ["completed", "rolled_back", "failed"]
            .iter()
            .map(|s| c.by_state.get(*s).copied().unwrap_or(0))
            .sum();
        if ended as usize >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("sagas did not finish: {c:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    // Rollback latency from the history of the failed ones: step_failed → rolled_back.
    let mut rb = Vec::new();
    for (id, failed) in ids.iter().filter(|(_, f)| *f) {
        let _ = failed;
        let v = taskstream::saga::ops::show(&mut conn, id).await?;
        let failed_at = v
            .history
            .iter()
            .find(|h| h.event.starts_with("step_failed"))
            .map(|h| h.at);
        if let (Some(a), Some(b)) = (failed_at, v.finished_at) {
            rb.push(b.saturating_sub(a) as f64);
        }
    }
    stop.cancel();
    wj.await??;
    oj.await??;
    println!(
        "  {n} sagas ended in {secs:.2} s: {:.0} sagas/s ({} rolled back)",
        n as f64 / secs,
        rb.len()
    );
    println!("  rollback latency (step failure → rolled_back, 3 compensations): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms", pct(&mut rb, 0.5), pct(&mut rb, 0.99), pct(&mut rb, 1.0));
    println!(
        "RESULT sagas_per_s={:.0} rollback_p50_ms={:.0} rollback_p99_ms={:.0}",
        n as f64 / secs,
        pct(&mut rb, 0.5),
        pct(&mut rb, 0.99)
    );
    Ok(())
}

/// Runs `n` calls of `f` with `conc` in flight; returns (calls/s, latencies in ms).
async fn timed_calls<F, Fut>(n: usize, conc: usize, f: F) -> Result<(f64, Vec<f64>)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let t0 = Instant::now();
    let mut js = tokio::task::JoinSet::new();
    for _ in 0..conc.max(1) {
        let (f, next, lat) = (f.clone(), next.clone(), lat.clone());
        js.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let s = Instant::now();
                f(i).await?;
                lat.lock().unwrap().push(s.elapsed().as_secs_f64() * 1e3);
            }
        });
    }
    while let Some(r) = js.join_next().await {
        r??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let lat = std::mem::take(&mut *lat.lock().unwrap());
    Ok((n as f64 / secs, lat))
}

async fn api_bench(url: &str, tasks: usize, conc: usize, dead: usize) -> Result<()> {
    let bin = taskstream_bin()?;
    let dir = std::env::temp_dir().join(format!("taskstream-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cfg = dir.join("serve.toml");
    std::fs::write(
        &cfg,
        format!("[redis]\nurl = \"{url}\"\n[http]\nlisten = \"\"\n[[queues]]\nname = \"api-single\"\n[[queues]]\nname = \"api-batch\"\n[[queues]]\nname = \"lib-single\"\n[[queues]]\nname = \"lib-batch\"\n[[queues]]\nname = \"api-dash\"\n"),
    )?;
    let log = std::fs::File::create(dir.join("serve.log"))?;
    let mut server = Command::new(&bin)
        .args(["serve", "-c"])
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conc)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while http
        .get(format!("{base}/queues"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        if Instant::now() > deadline {
            bail!("taskstream serve did not answer; log in {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rc = redis::Client::open(url)?.get_connection()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut rc)?;
    let redis_pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap_or("0")
        .trim()
        .to_string();
    let producer = Producer::connect(&base_config(url, "lib-single", 1)).await?;
    println!("api: {tasks} enqueues with {conc} in flight, over HTTP/1.1 keep-alive to `taskstream serve` (one process) against the library producer in the same run");

    // Single enqueues: library, then API, alternated twice.
    let mut rows = Vec::new();
    for round in 0..2 {
        let p = producer.clone();
        let (lib, mut ll) = timed_calls(tasks, conc, move |_| {
            let p = p.clone();
            async move {
                p.enqueue(NewTask::raw("lib-single", "noop", "{}")).await?;
                Ok(())
            }
        })
        .await?;
        let (h, b) = (http.clone(), base.clone());
        let (api, mut al) = timed_calls(tasks, conc, move |_| {
            let (h, b) = (h.clone(), b.clone());
            async move {
                let r = h
                    .post(format!("{b}/queues/api-single/tasks"))
                    .header("content-type", "application/json")
                    .body(r#"{"type":"noop","payload":{}}"#)
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 201, "enqueue answered {}", r.status());
                Ok(())
            }
        })
        .await?;
        println!(
            "  round {}: single  library {lib:>8.0}/s p99 {:.2} ms   API {api:>8.0}/s p50 {:.2} ms p99 {:.2} ms  ({:.2}x)",
            round + 1,
            pct(&mut ll, 0.99),
            pct(&mut al, 0.5),
            pct(&mut al, 0.99),
            api / lib
        );
        rows.push((lib, api, pct(&mut al, 0.5), pct(&mut al, 0.99)));
    }
    // Batches of 100.
    let batches = (tasks / 100).max(1);
    let body: String = format!(
        "{{\"tasks\":[{}]}}",
        vec![r#"{"type":"noop","payload":{}}"#; 100].join(",")
    );
    let mut brows = Vec::new();
    for round in 0..2 {
        let p = producer.clone();
        let (lib, _) = timed_calls(batches, conc.min(8), move |_| {
            let p = p.clone();
            async move {
                let b = (0..100)
                    .map(|_| NewTask::raw("lib-batch", "noop", "{}"))
                    .collect();
                p.enqueue_batch(b).await?;
                Ok(())
            }
        })
        .await?;
        let (h, b, bd) = (http.clone(), base.clone(), body.clone());
        let (api, mut al) = timed_calls(batches, conc.min(8), move |_| {
            let (h, b, bd) = (h.clone(), b.clone(), bd.clone());
            async move {
                let r = h
                    .post(format!("{b}/queues/api-batch/tasks/batch"))
                    .header("content-type", "application/json")
                    .body(bd)
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 201, "batch answered {}", r.status());
                Ok(())
            }
        })
        .await?;
        println!(
            "  round {}: batch of 100  library {:>8.0} tasks/s   API {:>8.0} tasks/s p99 {:.2} ms per batch  ({:.2}x)",
            round + 1,
            lib * 100.0,
            api * 100.0,
            pct(&mut al, 0.99),
            api / lib
        );
        brows.push((lib * 100.0, api * 100.0));
    }

    // The dashboard's reads at 10,000 queued tasks and `dead` dead letters.
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.cmd("XADD")
            .arg("ts:{api-dash}:stream")
            .arg("*")
            .arg("type")
            .arg("noop")
            .arg("payload")
            .arg(format!("{{\"i\":{i}}}"))
            .ignore();
    }
    pipe.query::<()>(&mut rc)?;
    for chunk in 0..dead.div_ceil(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk * 10_000..((chunk + 1) * 10_000).min(dead) {
            let err = if i == dead / 2 {
                "the needle: quota exceeded".to_string()
            } else {
                format!("timeout after {}s", i % 30)
            };
            pipe.cmd("XADD")
                .arg("ts:{api-dash}:dlq")
                .arg("*")
                .arg(&[
                    ("id", format!("d{i}")),
                    ("type", "email.send".into()),
                    (
                        "payload",
                        format!(
                            "{{\"to\":\"user{i}@example.com\",\"body\":\"{}\"}}",
                            "x".repeat(200)
                        ),
                    ),
                    ("dlq_reason", "exhausted: 3 of 3 attempts failed".into()),
                    ("dlq_error", err),
                ])
                .ignore();
        }
        pipe.query::<()>(&mut rc)?;
    }
    println!("  dashboard reads with 10,000 queued tasks and {dead} dead letters (one request at a time):");
    let calls: [(&str, String, usize); 4] = [
        ("queue stats (GET /queues)", format!("{base}/queues"), 200),
        (
            "first page of letters",
            format!("{base}/queues/api-dash/dead-letters?limit=50"),
            200,
        ),
        (
            "lookup, unknown id (all)",
            format!("{base}/queues/api-dash/tasks/no-such-task"),
            20,
        ),
        (
            "needle search, all pages",
            format!("{base}/queues/api-dash/dead-letters?error=needle&limit=100"),
            20,
        ),
    ];
    for (what, u, n) in calls {
        let mut lat = Vec::new();
        let (r0, s0) = (cpu_micros(&redis_pid), cpu_micros(&server.id().to_string()));
        let mut pages = 0;
        for _ in 0..n {
            let s = Instant::now();
            let mut cursor: Option<String> = None;
            loop {
                let url = match &cursor {
                    Some(c) => format!("{u}&cursor={c}"),
                    None => u.clone(),
                };
                let v: serde_json::Value = http.get(&url).send().await?.json().await?;
                pages += 1;
                match v.get("next_cursor").and_then(|c| c.as_str()) {
                    Some(c) if what.starts_with("needle") => cursor = Some(c.to_string()),
                    _ => break,
                }
            }
            lat.push(s.elapsed().as_secs_f64() * 1e3);
        }
        let (r1, s1) = (cpu_micros(&redis_pid), cpu_micros(&server.id().to_string()));
        println!(
            "    {what:<28} p50 {:>8.2} ms  p99 {:>8.2} ms  Redis CPU {:>8.0} µs/call  server CPU {:>8.0} µs/call  ({:.1} requests/call)",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            (r1 - r0) as f64 / n as f64,
            (s1 - s0) as f64 / n as f64,
            pages as f64 / n as f64
        );
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let med = |v: Vec<f64>| {
        let mut v = v;
        pct(&mut v, 0.5)
    };
    println!(
        "RESULT api_single_per_s={:.0} lib_single_per_s={:.0} api_batch_tasks_per_s={:.0} lib_batch_tasks_per_s={:.0}",
        med(rows.iter().map(|r| r.1).collect()),
        med(rows.iter().map(|r| r.0).collect()),
        med(brows.iter().map(|r| r.1).collect()),
        med(brows.iter().map(|r| r.0).collect())
    );
    Ok(())
}

/// The `process_id` and `used_memory` of the server at `url`.
fn redis_info(url: &str) -> Result<(String, u64)> {
    let mut c = redis::Client::open(url)?.get_connection()?;
    let info: String = redis::cmd("INFO").query(&mut c)?;
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("0")
            .trim()
            .to_string()
    };
    Ok((
        field("process_id:"),
        field("used_memory:").parse().unwrap_or(0),
    ))
}

async fn sizes_bench(url: &str, tasks: usize) -> Result<()> {
    println!("sizes: no-op tasks end to end by payload size (producer + worker in this process), Redis memory per 100,000 queued, then 1 and 2 worker processes");
    let (pid, _) = redis_info(url)?;
    println!("  | payload | tasks | tasks/s | MB/s of payload | client CPU µs/task | Redis CPU µs/task | Redis memory per 100k queued |");
    println!("  |---|---|---|---|---|---|---|");
    let mut result = Vec::new();
    for (label, size) in [("22 B", 22usize), ("1 KiB", 1024), ("16 KiB", 16384)] {
        let n = if size > 4096 { tasks / 5 } else { tasks };
        // {"t":1764650000000000} is 22 bytes; the filler makes up the rest.
        let pad = size.saturating_sub(30);
        let q = format!("bench-size{size}");
        let cfg = base_config(url, &q, 512);
        let (c0, r0) = (cpu_micros("self"), cpu_micros(&pid));
        let (tps, _, _) = end_to_end_padded(cfg, n, &q, pad).await?;
        let (c1, r1) = (cpu_micros("self"), cpu_micros(&pid));
        // Memory: the same tasks queued with no worker, then removed.
        let mq = format!("bench-mem{size}");
        let p = Producer::connect(&base_config(url, &mq, 1)).await?;
        let m = (n / 5).max(1000);
        let (_, before) = redis_info(url)?;
        let filler = "x".repeat(pad);
        for chunk in 0..m.div_ceil(500) {
            let b = 500.min(m - chunk * 500);
            let batch: Vec<NewTask> = (0..b)
                .map(|_| {
                    NewTask::raw(
                        mq.clone(),
                        "noop",
                        if pad == 0 {
                            format!("{{\"t\":{}}}", micros())
                        } else {
                            format!("{{\"t\":{},\"p\":\"{filler}\"}}", micros())
                        },
                    )
                })
                .collect();
            p.enqueue_batch(batch).await?;
        }
        let (_, after) = redis_info(url)?;
        let mut conn = p.connection();
        let _: () = redis::cmd("DEL")
            .arg(format!("ts:{{{mq}}}:stream"))
            .query_async(&mut conn)
            .await?;
        let per100k = after.saturating_sub(before) as f64 / m as f64 * 100_000.0 / 1e6;
        println!(
            "  | {label} | {n} | {tps:.0} | {:.1} | {:.1} | {:.1} | {per100k:.1} MB |",
            tps * size as f64 / 1e6,
            (c1 - c0) as f64 / n as f64,
            (r1 - r0) as f64 / n as f64,
        );
        result.push(format!(
            "tps_{size}={tps:.0} mem100k_{size}_mb={per100k:.1}"
        ));
    }
    // Worker processes: `taskstream worker` (builtin.noop) × 1 and × 2, this process floods.
    let bin = taskstream_bin()?;
    let dir = std::env::temp_dir().join(format!("taskstream-sizes-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!("  | worker processes | tasks/s | worker CPU µs/task (all processes) |");
    println!("  |---|---|---|");
    for procs in [1usize, 2] {
        let q = format!("bench-procs{procs}");
        let cfg = dir.join(format!("w{procs}.toml"));
        std::fs::write(&cfg, format!("[redis]\nurl = \"{url}\"\n[worker]\nbuiltin_handlers = true\nread_count = 512\nack_batch = 1024\n[http]\nlisten = \"\"\n[[queues]]\nname = \"{q}\"\nconcurrency = 512\nexpress_concurrency = 32\n"))?;
        let mut kids = Vec::new();
        for k in 0..procs {
            kids.push(spawn_worker(&bin, &cfg, &format!("p{procs}-{k}"), &dir)?);
        }
        let p = Producer::connect(&base_config(url, &q, 1)).await?;
        let mut conn = p.connection();
        // Wait for every process's consumer in the group.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v: redis::Value = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(format!("ts:{{{q}}}:stream"))
                .arg(taskstream::keys::DEFAULT_GROUP)
                .query_async(&mut conn)
                .await
                .unwrap_or(redis::Value::Nil);
            let n = match v {
                redis::Value::Array(a) => a.len(),
                _ => 0,
            };
            if n >= procs {
                break;
            }
            if Instant::now() > deadline {
                bail!("{procs} worker processes did not join the group within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu =
            |kids: &[Child]| -> u64 { kids.iter().map(|c| cpu_micros(&c.id().to_string())).sum() };
        let w0 = cpu(&kids);
        let t0 = Instant::now();
        let mut left = tasks;
        while left > 0 {
            let b = left.min(500);
            let batch: Vec<NewTask> = (0..b)
                .map(|_| NewTask::raw(q.clone(), "builtin.noop", "{}"))
                .collect();
            p.enqueue_batch(batch).await?;
            left -= b;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let len: u64 = redis::cmd("XLEN")
                .arg(format!("ts:{{{q}}}:stream"))
                .query_async(&mut conn)
                .await?;
            if len == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{len} tasks left after 120 s with {procs} worker processes");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let tps = tasks as f64 / t0.elapsed().as_secs_f64();
        let w = (cpu(&kids) - w0) as f64 / tasks as f64;
        println!("  | {procs} | {tps:.0} | {w:.1} |");
        result.push(format!("procs{procs}_tps={tps:.0}"));
        for mut k in kids {
            let _ = k.kill();
            let _ = k.wait();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("RESULT {}", result.join(" "));
    Ok(())
}

/// One paced run: `rate` tasks/s for `secs` s. Task i is due at t0 + i/rate; the producer
/// sends, every millisecond, the tasks due by then in one pipelined batch, each carrying its
/// due time and its send time, so a producer or worker that falls behind shows as latency
/// instead of slowing the offered load. Returns (for every task, latency in ms from its due
/// time and from its send, the achieved rate, CPU-µs per task of this process).
async fn paced_run(
    url: &str,
    queue: &str,
    rate: f64,
    secs: u64,
    concurrency: usize,
) -> Result<(Vec<(f64, f64)>, f64, f64)> {
    let n = (rate * secs as f64) as usize;
    let cfg = base_config(url, queue, concurrency);
    let done = Arc::new(AtomicU64::new(0));
    let lat: Arc<Mutex<Vec<(f64, f64)>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let (d2, l2) = (done.clone(), lat.clone());
    let mut reg = Registry::new();
    reg.register(
        "noop",
        handler_fn(move |ctx: TaskContext| {
            let now = micros();
            // {"t":<sent µs>,"d":<due µs>}
            let v: Vec<u64> = ctx
                .payload_str()
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|x| x.parse().ok())
                .collect();
            let (sent, due) = (
                v.first().copied().unwrap_or(0),
                v.get(1).copied().unwrap_or(0),
            );
            let ms = |t: u64| now.saturating_sub(t) as f64 / 1000.0;
            l2.lock().unwrap().push((ms(due), ms(sent)));
            d2.fetch_add(1, Ordering::Relaxed);
            async { Ok(serde_json::Value::Null) }
        }),
    );
    let stop = CancellationToken::new();
    let worker = taskstream::worker::Worker::new(cfg.clone(), reg);
    let wj = tokio::spawn(worker.run(stop.clone()));
    let p = Producer::connect(&cfg).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !taskstream::health::groups_ready() {
        if Instant::now() > deadline {
            bail!("worker did not start");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu0 = cpu_micros("self");
    let t0 = micros();
    let start = Instant::now();
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < n {
        tick.tick().await;
        let elapsed = start.elapsed().as_secs_f64();
        let due = ((elapsed * rate) as usize).min(n);
        if due <= sent {
            continue;
        }
        let now = micros();
        let batch: Vec<NewTask> = (sent..due)
            .map(|i| {
                let at = t0 + (i as f64 * 1e6 / rate) as u64;
                NewTask::raw(
                    queue.to_string(),
                    "noop",
                    format!("{{\"t\":{now},\"d\":{at}}}"),
                )
            })
            .collect();
        sent = due;
        // Sent without waiting for the reply, so a slow round trip delays no later batch.
        let p = p.clone();
        tokio::spawn(async move { p.enqueue_batch(batch).await });
    }
    let wait = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < n as u64 {
        if Instant::now() > wait {
            bail!(
                "only {} of {n} tasks ran within 60 s",
                done.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let achieved = n as f64 / start.elapsed().as_secs_f64();
    let cpu = (cpu_micros("self") - cpu0) as f64 / n as f64;
    stop.cancel();
    wj.await??;
    let l = std::mem::take(&mut *lat.lock().unwrap());
    Ok((l, achieved, cpu))
}

/// Capacity by a flood, then paced runs at 10%, 50% and 90% of it.
async fn latency_bench(url: &str, tasks: usize, secs: u64, concurrency: usize) -> Result<()> {
    println!("latency: capacity from a flood of {tasks} no-op tasks, then paced producers at 10%, 50%, 90% of it for {secs} s each (concurrency {concurrency}); latency = handler start − the task's scheduled send time, every task");
    let (cap, _, _) = end_to_end(url, tasks, concurrency, "bench-cap", 0).await?;
    println!("  capacity (flood):  {cap:>10.0} tasks/s");
    println!("  | offered | rate | achieved | from due: p50 / p99 / p99.9 / max ms | from send: p50 / p99 / p99.9 ms | client CPU µs/task |");
    println!("  |---|---|---|---|---|---|");
    let mut result = Vec::new();
    for (k, f) in [0.1, 0.5, 0.9].into_iter().enumerate() {
        let rate = cap * f;
        let (l, achieved, cpu) =
            paced_run(url, &format!("bench-paced{k}"), rate, secs, concurrency).await?;
        let mut due: Vec<f64> = l.iter().map(|x| x.0).collect();
        let mut sent: Vec<f64> = l.iter().map(|x| x.1).collect();
        let (p50, p99, p999) = (
            pct(&mut due, 0.5),
            pct(&mut due, 0.99),
            pct(&mut due, 0.999),
        );
        let max = pct(&mut due, 1.0);
        println!(
            "  | {:.0}% | {rate:.0}/s | {achieved:.0}/s | {p50:.2} / {p99:.2} / {p999:.2} / {max:.1} | {:.2} / {:.2} / {:.2} | {cpu:.1} |",
            f * 100.0,
            pct(&mut sent, 0.5),
            pct(&mut sent, 0.99),
            pct(&mut sent, 0.999)
        );
        result.push(format!(
            "p{}_p50_ms={p50:.2} p{}_p99_ms={p99:.2} p{}_p999_ms={p999:.2}",
            (f * 100.0) as u32,
            (f * 100.0) as u32,
            (f * 100.0) as u32
        ));
    }
    println!("RESULT capacity={cap:.0} {}", result.join(" "));
    Ok(())
}

/// One end-to-end run with span export as given; prints `RUN tps=… cpu_us=… …`.
async fn trace_run(url: &str, tasks: usize, otlp: Option<String>, ratio: f64) -> Result<()> {
    let mut cfg = base_config(url, "bench-trace", 512);
    cfg.tracing.otlp_endpoint = otlp;
    cfg.tracing.sample_ratio = ratio;
    let exporting = taskstream::telemetry::init(&cfg.tracing)?;
    let cpu0 = cpu_micros("self");
    let (tps, _, _) = end_to_end_cfg(cfg, tasks, "bench-trace").await?;
    let cpu = cpu_micros("self") - cpu0;
    let t = Instant::now();
    if let Some(e) = exporting {
        e.shutdown().await;
    }
    let flush = t.elapsed().as_secs_f64();
    let c = taskstream::telemetry::counts();
    println!(
        "RUN tps={tps:.0} cpu_us={:.2} emitted={} exported={} failed={} dropped={} flush_s={flush:.2}",
        cpu as f64 / tasks as f64,
        c.emitted,
        c.exported,
        c.failed,
        c.dropped()
    );
    Ok(())
}

/// Alternates [`trace_run`] children: export off, on (all sampled), on at 1%.
async fn trace_bench(url: &str, tasks: usize, rounds: usize) -> Result<()> {
    // A null collector: reads each request whole, counts it, answers 200.
    let (reqs, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (r2, b2) = (reqs.clone(), bytes.clone());
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            r2.fetch_add(1, Ordering::Relaxed);
            b2.fetch_add(body.len() as u64, Ordering::Relaxed);
            async { "" }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let otlp = format!("http://{}", l.local_addr()?);
    tokio::spawn(async move { axum::serve(l, app).await });
    println!("trace: {tasks} no-op tasks per run, {rounds} rounds of (off, on, 1%), each a fresh process; null collector at {otlp}");
    let me = std::env::current_exe()?;
    let setups: [(&str, Option<&str>, f64); 3] = [
        ("off", None, 1.0),
        ("on, all sampled", Some(otlp.as_str()), 1.0),
        ("on, 1% sampled", Some(otlp.as_str()), 0.01),
    ];
    let mut got: Vec<Vec<(f64, f64, String)>> = vec![Vec::new(); setups.len()];
    for round in 0..rounds {
        // The order rotates each round, so no setup always runs first or last.
        for i in (0..setups.len()).map(|k| (k + round) % setups.len()) {
            let (name, ep, ratio) = &setups[i];
            let mut cmd = tokio::process::Command::new(&me);
            cmd.args([
                "--redis-url",
                url,
                "trace-run",
                "--tasks",
                &tasks.to_string(),
            ])
            .args(["--ratio", &ratio.to_string()])
            .stderr(std::process::Stdio::null());
            if let Some(ep) = ep {
                cmd.args(["--otlp", ep]);
            }
            let out = cmd.output().await?;
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find(|l| l.starts_with("RUN "))
                .with_context(|| format!("{name}: no RUN line in {text}"))?;
            let field = |k: &str| -> f64 {
                line.split_whitespace()
                    .find_map(|f| {
                        f.strip_prefix(&format!("{k}="))
                            .and_then(|v| v.parse().ok())
                    })
                    .unwrap_or(f64::NAN)
            };
            println!("  round {} {name:<16} {line}", round + 1);
            got[i].push((field("tps"), field("cpu_us"), line.to_string()));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!("  | setup | tasks/s | client CPU µs/task |\n  |---|---|---|");
    let base = median(got[0].iter().map(|g| g.1).collect());
    for (i, (name, _, _)) in setups.iter().enumerate() {
        let tps = median(got[i].iter().map(|g| g.0).collect());
        let cpu = median(got[i].iter().map(|g| g.1).collect());
        println!(
            "  | {name} | {tps:.0} | {cpu:.2} ({:+.1}%) |",
            (cpu / base - 1.0) * 100.0
        );
    }
    println!(
        "  collector: {} requests, {:.1} MB",
        reqs.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed) as f64 / 1e6
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    taskstream::cli::return_large_blocks_promptly();
    let cli = Cli::parse();
    let (url, _guard) = match cli.redis_url {
        Some(u) => (u, None),
        None => {
            let g = taskstream::local_redis::LocalRedis::start("load", false)?;
            (g.url.clone(), Some(g))
        }
    };
    let before = run_keys(&url).await?;
    let r = match cli.mode {
        Mode::Throughput {
            tasks,
            concurrency,
            bound_script,
        } => throughput(&url, tasks, concurrency, bound_script.as_ref()).await,
        Mode::Memory { tasks } => memory(&url, tasks).await,
        Mode::Durability { tasks, rounds } => durability(&url, tasks, rounds).await,
        Mode::Cluster { tasks, rounds } => cluster_bench(&url, tasks, rounds).await,
        Mode::Recovery { kills } => recovery(&url, kills).await,
        Mode::Trace { tasks, rounds } => trace_bench(&url, tasks, rounds).await,
        Mode::Results { tasks, rounds } => results_bench(&url, tasks, rounds).await,
        Mode::Keys { tasks, rounds } => keys_bench(&url, tasks, rounds).await,
        Mode::Schedule {
            schedules,
            secs,
            replicas,
        } => schedule_bench(&url, schedules, secs, replicas).await,
        Mode::Sizes { tasks } => sizes_bench(&url, tasks).await,
        Mode::Latency {
            tasks,
            secs,
            concurrency,
        } => latency_bench(&url, tasks, secs, concurrency).await,
        Mode::TraceRun { tasks, otlp, ratio } => trace_run(&url, tasks, otlp, ratio).await,
        Mode::Api {
            tasks,
            concurrency,
            dead_letters,
        } => api_bench(&url, tasks, concurrency, dead_letters).await,
        Mode::Express {
            backlog,
            express,
            rounds,
        } => express_bench(&url, backlog, express, rounds).await,
        Mode::Saga {
            sagas,
            rate,
            fail_every,
        } => saga_bench(&url, sagas, rate, fail_every).await,
    };
    // Also after a failed run: whatever it wrote goes.
    match remove_run_keys(&url, &before).await {
        Ok(n) => println!("  removed the {n} keys this run created"),
        Err(e) => eprintln!("could not remove the keys this run created: {e}"),
    }
    r
}
