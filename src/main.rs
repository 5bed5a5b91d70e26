//! natgw command line: `check` validates a configuration; `run` starts the gateway; `lab`
//! builds a namespace topology and pushes real traffic through natgw; `status`, `sessions`,
//! `reload`, `drops` and `mappings` talk to a running natgw (src/cli/).

mod cli;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "natgw", version, about = "Poll-mode NAT44 gateway on AF_XDP")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    connect: cli::Connect,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a configuration file and print the effective configuration (defaults filled in).
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Print nothing on success.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Build a namespace topology, run natgw on it with real traffic (ping, UDP, TCP, a port
    /// forward), print what happened and remove everything again (also on Ctrl-C). Needs root.
    Lab {
        /// Inside hosts.
        #[arg(long, default_value_t = 2)]
        hosts: usize,
        /// Workers (and queues per gateway interface).
        #[arg(long, default_value_t = 1)]
        workers: u32,
        /// Keep the generated configuration file (its path is printed).
        #[arg(long)]
        keep_config: bool,
    },
    /// Run the gateway: attach XDP to the configured interfaces and forward until SIGTERM/SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Override dataplane.xdp_mode: auto (native, falling back to generic), native or generic.
        #[arg(long, value_parser = ["auto", "native", "generic"])]
        xdp_mode: Option<String>,
    },
    #[command(flatten)]
    Control(cli::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config, quiet } => match natgw::config::load(&config) {
            Ok(c) => {
                if !quiet {
                    use std::io::Write;
                    // Not print!: a closed pipe (`natgw check ... | head`) is not a panic.
                    let mut out = std::io::stdout().lock();
                    let _ = write!(out, "{}", c.to_toml());
                    let _ = write!(out, "\n{}", natgw::nat::memory::MemoryEstimate::of(&c));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("natgw: {}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Cmd::Run { config, xdp_mode } => run(&config, xdp_mode.as_deref()),
        Cmd::Control(c) => cli::run(&cli.connect, &c),
        Cmd::Lab {
            hosts,
            workers,
            keep_config,
        } => {
            use natgw_testbed::lab::{self, LabError, LabOptions};
            let opts = LabOptions {
                hosts,
                workers,
                tcp_bytes: 20 << 20,
                keep_config,
            };
            match lab::run(&opts, |c| natgw::config::parse(c).map(drop)) {
                Ok(()) => {
                    println!("\nlab: all traffic went through natgw as expected");
                    ExitCode::SUCCESS
                }
                Err(LabError::Interrupted) => {
                    eprintln!("\nlab: interrupted; everything it created was removed");
                    ExitCode::from(130)
                }
                Err(e) => {
                    eprintln!("\nlab: FAILED: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(path: &std::path::Path, xdp_mode: Option<&str>) -> ExitCode {
    use natgw::config::XdpMode;
    use natgw::dataplane::run::{
        Gateway, RunOptions, install_reload_handler, install_signal_handlers, signalled,
    };
    // First of all: SIGHUP reloads (the Unix convention) instead of ending natgw, also
    // while it reads its configuration and starts (a reload then is served once running).
    install_signal_handlers();
    install_reload_handler();
    natgw::log::init();
    let cfg = match natgw::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    // Before the gateway starts: a port in use, another natgw on the socket or a bad token
    // file stops natgw before it attaches anything (but after the refusals for missing
    // privileges, which say more).
    if let Err(e) = natgw::dataplane::run::preflight() {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }
    let api = match natgw::control::Api::open(&cfg.control) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = RunOptions {
        xdp_mode: xdp_mode.map(|m| match m {
            "native" => XdpMode::Native,
            "generic" => XdpMode::Generic,
            _ => XdpMode::Auto,
        }),
    };
    let gw = match Gateway::start(&cfg, &opts) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let modes: Vec<String> = gw
        .handle
        .xdp_modes
        .iter()
        .map(|(i, m)| format!("{i}={m:?}"))
        .collect();
    tracing::info!(
        workers = gw.workers(),
        "running with {} worker(s), XDP {}",
        gw.workers(),
        modes.join(" ")
    );
    let listen = cfg.control.listen;
    let state = natgw::control::State::new(gw.handle.clone(), path.to_path_buf());
    if let Err(e) = natgw::control::eventlog::start(&cfg, &gw.handle) {
        tracing::error!("eventlog: {e}");
    }
    // Removed when natgw stops (dropped at the end of this function).
    let _socket = match api.serve(std::sync::Arc::clone(&state)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("control API on {listen}: {e}");
            gw.shutdown();
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP takes the same path as POST /reload; a refused file keeps the running
    // configuration, and natgw keeps running either way.
    let reload = || match natgw::control::reload(&state) {
        Ok(m) => tracing::info!(generation = m.generation, "SIGHUP: {}", m.message),
        Err(e) => tracing::warn!("SIGHUP: reload refused, the running configuration stays: {e}"),
    };
    match gw.run_until(signalled, reload) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Non-zero, so that the service manager (Restart=on-failure) starts natgw again.
            tracing::error!("stopping: {e}; exiting with a failure status so that it is restarted");
            ExitCode::FAILURE
        }
    }
}
