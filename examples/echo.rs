//! An echo service, end to end.
//!
//! - `cargo run --example echo`: serves on 127.0.0.1:0 in this process, makes a few calls through
//!   the typed client, prints each result, drains the server and exits.
//! - `cargo run --example echo -- --serve 127.0.0.1:7000`: only the server, until Ctrl-C.
//! - `cargo run --example echo -- --connect 127.0.0.1:7000 --count 10000`: only the client,
//!   64 calls in flight; exits non-zero if any call failed. `--fail-fast` fails calls at once
//!   while the server cannot be reached instead of waiting for it.
//! - `--serve ADDR --journal FILE` also appends a line to FILE for every `echo`, `echo_bytes` and
//!   `sleep` call the server runs (the fault tests count handler runs with it).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use keel::{Bytes, Channel, Server};
use serde::{Deserialize, Serialize};

/// The service's own error, returned to the caller as a typed value.
#[derive(Debug, Serialize, Deserialize)]
pub enum EchoError {
    /// The server refuses to echo this word.
    Refused(String),
}

/// Echoes what it is sent.
#[keel::service]
pub trait Echo {
    /// Returns `text`.
    async fn echo(&self, text: String) -> String;
    /// Returns `data`; safe to run twice, so marked idempotent.
    #[idempotent]
    async fn echo_bytes(&self, data: Bytes) -> Bytes;
    /// Returns `word`, unless it is "boom".
    async fn check(&self, word: String) -> Result<String, EchoError>;
    /// Answers after `millis` milliseconds; by default a call gives up after 100 ms.
    #[deadline(100ms)]
    async fn sleep(&self, millis: u64) -> u64;
}

#[derive(Default)]
struct EchoService {
    /// Where every `echo`, `echo_bytes` and `sleep` call that runs is recorded, one line each
    /// (`--journal`).
    journal: Option<std::sync::Mutex<std::fs::File>>,
}

impl EchoService {
    fn record(&self, line: std::fmt::Arguments<'_>) {
        use std::io::Write;
        if let Some(journal) = &self.journal {
            let line = format!("{line}\n");
            // One write(2) per line, appended: a line survives even a SIGKILL right after.
            let mut file = journal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = file.write_all(line.as_bytes());
        }
    }
}

impl Echo for EchoService {
    async fn echo(&self, text: String) -> String {
        self.record(format_args!("echo {text}"));
        text
    }

    async fn echo_bytes(&self, data: Bytes) -> Bytes {
        self.record(format_args!("echo_bytes {}", data.len()));
        data
    }

    async fn check(&self, word: String) -> Result<String, EchoError> {
        if word == "boom" {
            Err(EchoError::Refused(word))
        } else {
            Ok(word)
        }
    }

    async fn sleep(&self, millis: u64) -> u64 {
        self.record(format_args!("sleep {millis}"));
        tokio::time::sleep(Duration::from_millis(millis)).await;
        millis
    }
}

#[derive(Parser)]
#[command(about = "keel's echo example")]
struct Args {
    /// Run only the server, on this address, until Ctrl-C.
    #[arg(long, value_name = "ADDR", conflicts_with = "connect")]
    serve: Option<SocketAddr>,
    /// Run only the client, against this address.
    #[arg(long, value_name = "ADDR")]
    connect: Option<SocketAddr>,
    /// How many calls the client makes.
    #[arg(long, default_value_t = 1000, requires = "connect")]
    count: usize,
    /// With --serve: append a line to FILE for every `echo`, `echo_bytes` and `sleep` call the server runs
    /// (how the fault tests count handler runs across a killed server).
    #[arg(long, value_name = "FILE", requires = "serve")]
    journal: Option<std::path::PathBuf>,
    /// Fail calls at once while the server cannot be reached, instead of waiting for it (up to
    /// each call's deadline) while the client reconnects.
    #[arg(long, requires = "connect")]
    fail_fast: bool,
}

async fn serve(
    addr: SocketAddr,
    journal: Option<&std::path::Path>,
) -> std::io::Result<keel::ServerHandle> {
    let journal = match journal {
        Some(path) => Some(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )),
        None => None,
    };
    Server::builder()
        .add_service(EchoServer::new(EchoService { journal }))
        .build()
        .bind(addr)
        .await
}

#[tokio::main]
async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(addr) = args.serve {
        let server = serve(addr, args.journal.as_deref()).await?;
        println!("listening on {}", server.local_addr());
        tokio::signal::ctrl_c().await?;
        println!("draining");
        server.shutdown().await;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Some(addr) = args.connect {
        return Ok(load(addr, args.count, args.fail_fast).await);
    }
    demo().await?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Server and client in one process: one line per call.
async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let server = serve("127.0.0.1:0".parse()?, None).await?;
    println!("server listening on {}", server.local_addr());
    let client = EchoClient::new(Channel::builder(server.local_addr()).build());

    println!(
        "echo(\"hello\") -> {:?}",
        client.echo("hello".into()).await?
    );
    let data = Bytes::from_static(&[1, 2, 3, 4, 5]);
    println!(
        "echo_bytes([1, 2, 3, 4, 5]) -> {:?}",
        &client.echo_bytes(data).await?[..]
    );
    println!(
        "check(\"fine\") -> {:?}",
        client.check("fine".into()).await?
    );
    println!(
        "check(\"boom\") -> {:?}",
        client.check("boom".into()).await?
    );
    match client.sleep(500).await {
        Ok(millis) => println!("sleep(500) -> {millis}"),
        Err(err) => println!("sleep(500) with its 100 ms deadline -> {err}"),
    }
    let patient = client.with_options(keel::CallOptions::new().timeout(Duration::from_secs(1)));
    println!(
        "sleep(50) with a 1 s deadline -> {:?}",
        patient.sleep(50).await?
    );

    server.shutdown().await;
    println!("server drained and stopped");
    Ok(())
}

/// `count` idempotent echo calls, 64 in flight, each reply checked against what was sent.
async fn load(addr: SocketAddr, count: usize, fail_fast: bool) -> std::process::ExitCode {
    let channel = Channel::builder(addr).wait_for_ready(!fail_fast).build();
    let client = EchoClient::new(channel);
    let results: Vec<bool> = futures::stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            async move {
                let sent = Bytes::from(format!("call {i}"));
                match client.echo_bytes(sent.clone()).await {
                    Ok(reply) => reply == sent,
                    Err(err) => {
                        eprintln!("call {i} failed: {err}");
                        false
                    }
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let ok = results.iter().filter(|&&ok| ok).count();
    println!("{ok} ok, {} failed", count - ok);
    if ok == count {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
