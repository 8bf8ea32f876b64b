//! `outpost-bench`, run by `cargo xtask bench`: measures the DESIGN.md §7 quality bars on this
//! machine and prints them as a table beside their targets. A missed target is printed, never an
//! error: bench does not fail.
//!
//! `cargo xtask bench` builds this binary, the hub and the runners with `--release` and runs it
//! (the in-process parts — the load generators and the log pipeline, which are the runner's own
//! `JobLog`, `Uploader` and `HubLogTarget` — must be release code too). It lives in a package of
//! its own so that `cargo xtask ci` builds no HTTP stack before its first check. The hub and the
//! runner under test are real child processes on 127.0.0.1, each in its own directory under a
//! temporary one.
//!
//! Adding a row: write an `async fn(&Ctx, &mut Vec<Row>) -> anyhow::Result<()>` that pushes one or
//! more [`Row`]s, list it in [`BENCHES`] and dispatch it in [`measure`].

mod connections;
mod dispatch;
mod docker;
mod logs;
mod procs;
mod runner;
mod table;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::procs::Ctx;
use crate::table::{Row, Verdict};

/// Where the release binaries under test are; by default the directory of this executable
/// (`cargo xtask bench` builds them all there).
const BIN_DIR_ENV: &str = "OUTPOST_BENCH_BIN_DIR";

/// One measurement: its name for `--only` and what it covers.
struct Bench {
    name: &'static str,
    about: &'static str,
}

/// Every measurement, in the order of DESIGN.md §7.
const BENCHES: &[Bench] = &[
    Bench {
        name: "pickup",
        about: "enqueue → job in the hands of a client parked in acquire",
    },
    Bench {
        name: "first-step",
        about: "enqueue → first step's process started (runner-process)",
    },
    Bench {
        name: "cancel",
        about: "cancel requested → step process gone (kill_grace 0s)",
    },
    Bench {
        name: "throughput",
        about: "hub dispatch throughput, no-op jobs, one runner with 16 slots",
    },
    Bench {
        name: "logs",
        about: "log pipeline: mask + spool + upload + hub store",
    },
    Bench {
        name: "runner-rss",
        about: "idle runner-process resident memory",
    },
    Bench {
        name: "idle-runners",
        about: "hub RSS and request rate with many idle long-polling runners",
    },
    Bench {
        name: "herd",
        about: "dispatch rate and hub CPU per job with 2,000 idle runners parked in acquire",
    },
    Bench {
        name: "connections",
        about: "hub with 20,000 idle TCP connections: limit, /healthz, timeouts",
    },
    Bench {
        name: "docker",
        about: "docker step overhead vs a bare `docker run`; 5-step job wall time",
    },
];

async fn measure(name: &str, ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    match name {
        "pickup" => dispatch::pickup(ctx, rows).await,
        "first-step" => runner::first_step(ctx, rows).await,
        "cancel" => runner::cancel(ctx, rows).await,
        "throughput" => dispatch::throughput(ctx, rows).await,
        "logs" => logs::pipeline(ctx, rows).await,
        "runner-rss" => runner::idle_rss(ctx, rows).await,
        "idle-runners" => dispatch::idle_runners(ctx, rows).await,
        "herd" => dispatch::herd(ctx, rows).await,
        "connections" => connections::idle_connections(ctx, rows).await,
        "docker" => docker::overhead(ctx, rows).await,
        other => bail!("no measurement named `{other}`"),
    }
}

#[derive(Debug, Default)]
struct Options {
    quick: bool,
    keep: bool,
    only: Vec<String>,
    help: bool,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut opts = Options::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => opts.quick = true,
                "--keep" => opts.keep = true,
                "-h" | "--help" => opts.help = true,
                "--only" => {
                    let names = args.next().context("--only needs a name")?;
                    opts.only.extend(names.split(',').map(str::to_owned));
                }
                other => match other.strip_prefix("--only=") {
                    Some(names) => opts.only.extend(names.split(',').map(str::to_owned)),
                    None => {
                        bail!("unknown bench option `{other}` (try `cargo xtask bench --help`)")
                    }
                },
            }
        }
        for name in &opts.only {
            if !BENCHES.iter().any(|b| b.name == name) {
                bail!(
                    "no measurement named `{name}` (one of: {})",
                    BENCHES
                        .iter()
                        .map(|b| b.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(opts)
    }

    fn selected(&self) -> impl Iterator<Item = &'static Bench> + '_ {
        BENCHES
            .iter()
            .filter(|b| self.only.is_empty() || self.only.iter().any(|o| o == b.name))
    }
}

fn usage() -> String {
    let mut text = String::from(
        "usage: cargo xtask bench [--quick] [--only NAME[,NAME…]] [--keep]\n\n\
         Measures the DESIGN.md §7 figures on this machine with the release binaries (all\n\
         traffic on 127.0.0.1). A missed target is printed, not an error.\n\n\
         options:\n  --quick   fewer rounds and smaller sizes (a smoke run, figures are rougher)\n  \
         --only    run only these measurements\n  --keep    keep the work directory (hub and runner logs)\n\n\
         measurements:\n",
    );
    for b in BENCHES {
        text.push_str(&format!("  {:<13} {}\n", b.name, b.about));
    }
    text
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let opts = Options::parse(args)?;
    if opts.help {
        print!("{}", usage());
        return Ok(());
    }
    let bin_dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .parent()
            .context("this executable has no directory")?
            .to_owned(),
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "outpost-bench: this is a debug build; the figures are not the release code's (run `cargo xtask bench`)"
        );
    }
    let fd_limit = procs::raise_fd_limit();
    let work = tempfile::Builder::new()
        .prefix("outpost-bench-")
        .tempdir()
        .context("cannot create the bench's work directory")?;
    let ctx = Ctx::new(bin_dir, work.path().to_owned(), opts.quick, fd_limit);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = Started::now();
    let rows = runtime.block_on(measure_all(&opts, &ctx));
    // Whatever a measurement left running is stopped with the runtime.
    drop(runtime);
    print!("{}", header(&ctx, &started));
    print!("{}", table::render(&rows));
    if opts.keep {
        let kept = work.keep();
        println!("\nwork directory kept: {}", kept.display());
    }
    Ok(())
}

async fn measure_all(opts: &Options, ctx: &Ctx) -> Vec<Row> {
    let mut rows = Vec::new();
    for bench in opts.selected() {
        eprintln!("bench: {} …", bench.name);
        let started = Instant::now();
        let before = rows.len();
        if let Err(e) = measure(bench.name, ctx, &mut rows).await {
            rows.push(Row {
                bench: bench.name,
                what: bench.about.to_owned(),
                measured: "—".to_owned(),
                target: "—".to_owned(),
                verdict: Verdict::Error,
                notes: vec![format!("error: {e:#}")],
            });
        }
        for row in &rows[before..] {
            eprintln!("bench: {}: {} ({})", bench.name, row.measured, row.verdict);
        }
        eprintln!(
            "bench: {} done in {:.1} s",
            bench.name,
            started.elapsed().as_secs_f64()
        );
    }
    rows
}

/// The machine, for the table's header.
/// When the measurements started, and how busy the machine was then.
struct Started {
    date: String,
    load: String,
}

impl Started {
    fn now() -> Started {
        Started {
            date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            load: load_average(),
        }
    }
}

/// The 1-, 5- and 15-minute load averages (other work on the machine skews every figure).
fn load_average() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn header(ctx: &Ctx, started: &Started) -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let rustc = command_line(
        &std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()),
        &["--version"],
    );
    format!(
        "outpost bench, {date}{quick}\n\
         machine: {cores} cores ({model}), {mem:.1} GiB memory, Linux {kernel}, {rustc}\n\
         binaries: release builds in {bins}; hub and runner are separate processes on 127.0.0.1\n\
         file descriptors: soft limit {fds}; load average {load_before} at the start, {load_after} \
         at the end\n\n",
        date = started.date,
        load_before = started.load,
        load_after = load_average(),
        quick = if ctx.quick { " (--quick)" } else { "" },
        mem = mem_kib as f64 / (1024.0 * 1024.0),
        bins = ctx.bin_dir.display(),
        fds = ctx.fd_limit,
    )
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| format!("{program}: unknown"))
}
