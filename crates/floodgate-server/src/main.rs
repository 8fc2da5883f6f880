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
        /// What to block: ip:203.0.113.7, ip:203.0.113.0/24, header:x-api-key:KEY.
        target: String,
        /// How long (1ms to 366d); the admin API's default when absent.
        #[arg(long)]
        ttl: Option<String>,
        /// Why, shown in listings.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Lift a block (manual, or a penalty block by its key).
    Unblock {
        /// The target or penalty key.
        target: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one key's counters and override on a rule, taking nothing.
    Inspect {
        /// The rule.
        rule: String,
        /// The key, as the rule builds it (e.g. 203.0.113.7 for key = "ip").
        key: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Give one key a limit of its own on a rule, on every instance.
    Override {
        /// The rule.
        rule: String,
        /// The key.
        key: String,
        /// Its limit.
        #[arg(long)]
        limit: u64,
        /// Its window (default: the rule's).
        #[arg(long)]
        window: Option<String>,
        /// Its burst (token_bucket rules).
        #[arg(long)]
        burst: Option<u64>,
        /// How long it lasts (default: until removed).
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The heaviest clients of the last 5 minutes, over every instance.
    Top {
        /// One rule (default: every rule).
        #[arg(long)]
        rule: Option<String>,
        /// How many.
        #[arg(short = 'n', default_value_t = 20)]
        n: u32,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where the admin API is and how to print; the token comes only from
/// FLOODGATE_ADMIN_TOKEN.
#[derive(clap::Args)]
struct AdminArgs {
    /// The admin API's URL.
    #[arg(long = "admin", env = "FLOODGATE_ADMIN_URL", default_value = floodgate_server::cli::DEFAULT_ADMIN_URL)]
    url: String,
    /// Print the admin API's JSON instead of a table.
    #[arg(long)]
    json: bool,
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
fn operate(op: floodgate_server::cli::Operation, admin: &AdminArgs) -> ExitCode {
    use floodgate_server::cli;
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
    use floodgate_server::cli::Operation;
    let cli = Cli::parse();
    match cli.command {
        Command::Blocks { admin } => operate(Operation::Blocks, &admin),
        Command::Block {
            target,
            ttl,
            reason,
            admin,
        } => operate(
            Operation::Block {
                target,
                ttl,
                reason,
            },
            &admin,
        ),
        Command::Unblock { target, admin } => operate(Operation::Unblock { target }, &admin),
        Command::Inspect { rule, key, admin } => operate(Operation::Inspect { rule, key }, &admin),
        Command::Override {
            rule,
            key,
            limit,
            window,
            burst,
            ttl,
            admin,
        } => operate(
            Operation::Override {
                rule,
                key,
                limit,
                window,
                burst,
                ttl,
            },
            &admin,
        ),
        Command::Top { rule, n, admin } => operate(Operation::Top { rule, n }, &admin),
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
