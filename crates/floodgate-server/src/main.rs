//! `floodgate`: an API gateway and decision service with rate limits shared by
//! every instance.
//!
//! ```text
//! floodgate serve [--config FILE] [--listen ADDR] [--workers N]   # no --config: built-in demo
//! floodgate check-config FILE
//! floodgate --version
//! floodgate blocks | block | unblock | inspect | override | top   # a running instance's admin API
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use floodgate_server::cli::{self, AdminArgs, Operation};
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
    /// List the blocks in force (manual and penalty), on every instance.
    Blocks {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Block a client on every instance sharing the store.
    Block {
        #[command(flatten)]
        args: cli::BlockArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Lift a block (manual, or a penalty block by its key).
    Unblock {
        #[command(flatten)]
        args: cli::UnblockArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one key's counters and override on a rule, taking nothing.
    Inspect {
        #[command(flatten)]
        args: cli::InspectArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Give one key a limit of its own on a rule, on every instance.
    Override {
        #[command(flatten)]
        args: cli::OverrideArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The heaviest clients of the last 5 minutes, over every instance.
    Top {
        #[command(flatten)]
        args: cli::TopArgs,
        #[command(flatten)]
        admin: AdminArgs,
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

/// Runs an operating command; prints its result or the API's refusal.
#[allow(clippy::print_stdout)] // the command's output
fn operate(op: Operation, admin: &AdminArgs) -> ExitCode {
    let token = std::env::var("FLOODGATE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    match cli::run(
        &op,
        &admin.url,
        token.as_deref(),
        cli::Output::for_stdout(admin.json),
    ) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("floodgate: {e}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)] // check-config's summary is the command's output
fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Blocks { admin } => operate(Operation::Blocks, &admin),
        Command::Block { args, admin } => operate(Operation::Block(args), &admin),
        Command::Unblock { args, admin } => operate(Operation::Unblock(args), &admin),
        Command::Inspect { args, admin } => operate(Operation::Inspect(args), &admin),
        Command::Override { args, admin } => operate(Operation::Override(args), &admin),
        Command::Top { args, admin } => operate(Operation::Top(args), &admin),
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
