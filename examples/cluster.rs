//! One client over three servers: kill one, and the calls keep working.
//!
//! - `cargo run --example cluster`: starts three server processes (this program with `--serve`),
//!   sends calls to all three through one channel, SIGKILLs one of them after a second and goes
//!   on calling; prints which server answered how many calls in each phase, and exits non-zero if
//!   any call failed.
//! - `cargo run --example cluster -- --serve 127.0.0.1:7001 --name a`: only one server.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use keel::{Channel, Server};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Says which server answered.
#[keel::service]
pub trait Who {
    /// The server's name; safe to run twice, so a call may be retried on another server.
    #[idempotent]
    async fn name(&self) -> String;
}

struct Named(String);

impl Who for Named {
    async fn name(&self) -> String {
        self.0.clone()
    }
}

#[derive(Parser)]
#[command(about = "keel's cluster example")]
struct Args {
    /// Run only a server, on this address, until killed.
    #[arg(long, value_name = "ADDR")]
    serve: Option<SocketAddr>,
    /// The server's name, with --serve.
    #[arg(long, default_value = "server", requires = "serve")]
    name: String,
}

#[tokio::main]
async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(addr) = args.serve {
        let server = Server::builder()
            .add_service(WhoServer::new(Named(args.name)))
            .build()
            .bind(addr)
            .await?;
        println!("listening on {}", server.local_addr());
        std::future::pending::<()>().await;
    }

    let mut servers = Vec::new();
    for name in ["a", "b", "c"] {
        servers.push(start(name).await?);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|(_, addr)| *addr).collect();
    println!("servers a, b, c on {addrs:?}");

    // Defaults throughout: peak-EWMA balancing, retries on another server, reconnects.
    let client = WhoClient::new(Channel::cluster(addrs).build());
    let mut failed = 0;
    for phase in ["all three up", "b killed"] {
        if phase == "b killed" {
            servers[1].0.kill().await?;
            println!("SIGKILL sent to b");
        }
        let mut answered: BTreeMap<String, usize> = BTreeMap::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::Instant::now() < until {
            let calls: Vec<_> = (0..16).map(|_| client.name()).collect();
            for result in futures::future::join_all(calls).await {
                match result {
                    Ok(name) => *answered.entry(name).or_default() += 1,
                    Err(err) => {
                        failed += 1;
                        eprintln!("call failed: {err}");
                    }
                }
            }
        }
        println!("{phase}: answered by {answered:?}");
    }
    for (mut child, _) in servers {
        let _ = child.kill().await;
    }
    println!("failed calls: {failed}");
    Ok(if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// Starts this program as server `name` on 127.0.0.1:0 and reads the address it prints.
async fn start(name: &str) -> Result<(Child, SocketAddr), Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve", "127.0.0.1:0", "--name", name])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await??
        .ok_or("the server exited")?;
    let addr = line
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("unexpected first line {line:?}"))?
        .parse()?;
    Ok((child, addr))
}
