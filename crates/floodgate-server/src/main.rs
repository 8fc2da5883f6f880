//! `floodgate`: an API gateway and decision service with rate limits shared by
//! every instance.
//!
//! ```text
//! floodgate serve [--config FILE] [--listen ADDR] [--workers N]   # no --config: built-in demo
//! floodgate check-config FILE
//! floodgate --version
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use floodgate_server::config::{self, Overrides};

/// mimalloc instead of the C library's allocator. Requests allocate and free
/// small buffers on every worker thread, and a request waiting on the store
/// frees on another thread than it allocated on; glibc's malloc then takes
/// its slow paths (consolidation, arena locks). Measured with
/// bench/gateway.sh: see docs/PERFORMANCE.md, "Allocator".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "floodgate",
    version,
    about = "Distributed rate limiter and API gateway"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without --config (or FLOODGATE_CONFIG), runs the built-in demo.
    Serve {
        /// The config file.
        #[arg(long, env = "FLOODGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Listen here instead of `server.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Run a supervisor with this many worker processes sharing the port.
        #[arg(long)]
        workers: Option<u16>,
    },
    /// Validate a config file: exit 0 with a summary, or 1 with every problem.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOODGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: PM2's and journald's log
    // files would otherwise fill with escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[allow(clippy::print_stdout)] // check-config's summary is the command's output
fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match config::load(&file, &Overrides::from_env()) {
            Ok(settings) => {
                println!("{}", config::summary(&settings));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            listen,
            workers,
        } => {
            init_logging(cli.log_format);
            let overrides = Overrides {
                listen,
                ..Overrides::from_env()
            };
            let result = match workers {
                Some(n) if n > 1 => {
                    let log_format = match cli.log_format {
                        LogFormat::Text => "text",
                        LogFormat::Json => "json",
                    };
                    floodgate_server::supervisor::run(n, config, overrides, log_format)
                }
                _ => floodgate_server::run_blocking(config, overrides),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("floodgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
