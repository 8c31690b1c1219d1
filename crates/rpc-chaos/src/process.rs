//! Process-level faults: a server in a child process that can be killed, stopped, resumed and
//! restarted on the same port.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a started server has to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A server running as a child process.
///
/// The program is started with `--serve ADDR` (first `127.0.0.1:0`, on a restart the address it
/// had) plus any extra arguments, and must print `listening on ADDR` as its first line, as keel's
/// echo example does. The child is killed when this value is dropped.
#[derive(Debug)]
pub struct ServerProcess {
    program: PathBuf,
    extra: Vec<OsString>,
    child: Child,
    addr: SocketAddr,
}

/// Why a server process could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The program could not be run.
    Spawn(std::io::Error),
    /// It did not print `listening on ADDR` in time.
    NoAddress(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Spawn(_) => f.write_str("the server program could not be run"),
            Self::NoAddress(why) => write!(f, "the server did not announce its address: {why}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Spawn(err) => Some(err),
            Self::NoAddress(_) => None,
        }
    }
}

impl ServerProcess {
    /// Starts `program --serve 127.0.0.1:0 extra...` and waits for its address.
    ///
    /// # Errors
    /// [`StartError`] when it cannot be run or does not announce its address within 20 s.
    pub async fn start(
        program: impl Into<PathBuf>,
        extra: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<Self, StartError> {
        let program = program.into();
        let extra: Vec<OsString> = extra.into_iter().map(Into::into).collect();
        let any_port: SocketAddr = ([127, 0, 0, 1], 0).into();
        let (child, addr) = spawn(&program, &extra, any_port).await?;
        Ok(Self {
            program,
            extra,
            child,
            addr,
        })
    }

    /// The address the server listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The child's process id, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn signal(&self, signal: Signal) -> std::io::Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| std::io::Error::other("the server has exited"))?;
        let pid = Pid::from_raw(i32::try_from(pid).map_err(std::io::Error::other)?);
        kill(pid, signal).map_err(std::io::Error::from)
    }

    /// SIGKILL: the process dies at once; the kernel closes its sockets.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }

    /// SIGSTOP: the process hangs with its sockets open; the kernel still accepts connections and
    /// buffers bytes for it.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn stop(&self) -> std::io::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT: a stopped process runs again.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn resume(&self) -> std::io::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGINT: a keel server drains and exits.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn interrupt(&self) -> std::io::Result<()> {
        self.signal(Signal::SIGINT)
    }

    /// Waits for the process to exit.
    ///
    /// # Errors
    /// When waiting fails.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Kills the process if it still runs and starts it again on the same address.
    ///
    /// # Errors
    /// [`StartError`] when the new process does not start.
    pub async fn restart(&mut self) -> Result<(), StartError> {
        let _ = self.child.kill().await;
        let (child, addr) = spawn(&self.program, &self.extra, self.addr).await?;
        self.child = child;
        self.addr = addr;
        Ok(())
    }
}

async fn spawn(
    program: &PathBuf,
    extra: &[OsString],
    addr: SocketAddr,
) -> Result<(Child, SocketAddr), StartError> {
    let mut child = Command::new(program)
        .arg("--serve")
        .arg(addr.to_string())
        .args(extra)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(StartError::Spawn)?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| StartError::NoAddress("no stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(STARTUP_TIMEOUT, lines.next_line())
        .await
        .map_err(|_| StartError::NoAddress("timed out".into()))?
        .map_err(|e| StartError::NoAddress(e.to_string()))?
        .ok_or_else(|| StartError::NoAddress("it exited".into()))?;
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| StartError::NoAddress(format!("first line was {first:?}")))?;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}
