//! natgw command line: `check` validates a configuration; `run` starts the gateway; `lab`
//! builds a namespace topology and pushes real traffic through natgw.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "natgw", version, about = "Poll-mode NAT44 gateway on AF_XDP")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config, quiet } => match natgw::config::load(&config) {
            Ok(c) => {
                if !quiet {
                    print!("{}", c.to_toml());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("natgw: {}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
    }
}
