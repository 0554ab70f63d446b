//! The `ficus` binary: flags, logging, exit codes. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// A strangler-fig migration proxy: move a monolith's endpoints to new services one route at a time.
#[derive(Parser)]
#[command(name = "ficus", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Worker threads (default: one per CPU). 1 runs a single-threaded runtime.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default command).
    Serve {
        /// The route table.
        #[arg(long, short, default_value = "routes.toml")]
        config: PathBuf,
    },
    /// Validate a route table: exit 0, or name the file, line and fix.
    Check {
        /// The route table.
        #[arg(default_value = "routes.toml")]
        file: PathBuf,
    },
    /// Say which route a request matches, why, and where it would go.
    Explain {
        /// The route table.
        #[arg(long, short, default_value = "routes.toml")]
        config: PathBuf,
        /// Request method, e.g. GET.
        method: String,
        /// Request path, e.g. /api/users/42.
        path: String,
        /// A request header, as 'name: value' (repeatable), e.g. for a sticky key.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Start stand-in services and the proxy in front of them.
    Demo {
        /// The demo's route table.
        #[arg(long, short, default_value = "examples/demo/routes.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command.unwrap_or(Command::Serve {
        config: PathBuf::from("routes.toml"),
    }) {
        Command::Check { file } => match ficus::config::load(&file) {
            Ok(table) => {
                println!(
                    "{}: ok ({} routes, {} upstreams)",
                    file.display(),
                    table.routes.len(),
                    table.upstreams.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Explain {
            config,
            method,
            path,
            headers,
        } => explain(&config, &method, &path, &headers),
        Command::Serve { config } => run(cli.threads, config, false),
        Command::Demo { config } => run(cli.threads, config, true),
    }
}

fn explain(config: &std::path::Path, method: &str, path: &str, headers: &[String]) -> ExitCode {
    let table = match ficus::config::load(config) {
        Ok(table) => table,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        eprintln!("\"{method}\" is not an HTTP method");
        return ExitCode::FAILURE;
    };
    let mut map = HeaderMap::new();
    for header in headers {
        let parsed = header.split_once(':').and_then(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                HeaderValue::from_str(value.trim()).ok()?,
            ))
        });
        match parsed {
            Some((name, value)) => {
                map.append(name, value);
            }
            None => {
                eprintln!("-H \"{header}\": write a header as 'name: value'");
                return ExitCode::FAILURE;
            }
        }
    }
    let fields = ficus::message::Fields::from_map(map);
    print!(
        "{}",
        ficus::explain::explain(&table, &method, path, &fields)
    );
    ExitCode::SUCCESS
}

fn run(threads: Option<usize>, config: PathBuf, demo: bool) -> ExitCode {
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n.max(1));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    // Reloads read the table on a blocking thread, which exits a second after: between
    // reloads, `--threads 1` runs on exactly one thread (the kernel then skips file
    // reference counting on every socket call).
    let runtime = builder
        .enable_all()
        .thread_keep_alive(Duration::from_secs(1))
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Listen for signals before anything starts: a SIGTERM that arrives while
        // ficus is starting must drain and exit 0, not kill the process.
        let mut signals = match Signals::new() {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("cannot listen for signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        if demo && let Err(e) = ficus::demo::start_stand_ins().await {
            eprintln!("{e}\nIs another demo (or something else) using these ports?");
            return ExitCode::FAILURE;
        }
        let running = match ficus::start(ficus::Options::new(&config)).await {
            Ok(running) => running,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        if demo {
            println!(
                "{}",
                ficus::demo::instructions(
                    running.proxy_addr,
                    running.admin_addr,
                    &config.display().to_string()
                )
            );
        }
        signals.recv().await;
        tracing::info!(
            "shutting down: draining in-flight requests (a second signal exits at once)"
        );
        running.shutdown();
        tokio::select! {
            () = running.wait() => ExitCode::SUCCESS,
            () = signals.recv() => ExitCode::FAILURE,
        }
    })
}

/// SIGTERM and SIGINT (Ctrl-C), registered once so no signal is missed between waits.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A log line that cannot be written (stderr closed: the log collector went away) is
    // dropped. Reporting it, tracing-subscriber's default, goes through `eprintln!`,
    // which panics on the same closed stderr: every log line would then kill the task
    // that wrote it, and the first one on the main thread the process.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
