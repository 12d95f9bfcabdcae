//! A private `nats-server` with JetStream, for `whistle up` and for tests: started on a free port
//! with its store in a folder of ours, stopped with SIGTERM (or killed on purpose).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a local server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalNatsError {
    #[error(
        "nats-server not found on PATH or in /usr/sbin; install it (Debian/Ubuntu: `apt-get install nats-server`, \
         or download a release from https://github.com/nats-io/nats-server/releases), \
         set NATS_SERVER_BIN to its path, or pass --nats-url to use a running server"
    )]
    NotFound,
    #[error("cannot start nats-server: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot write the nats-server users: {0}")]
    Accounts(String),
    #[error("cannot create the NATS store folder {dir}: {error}")]
    StoreDir { dir: String, error: std::io::Error },
    #[error("nats-server exited at start ({status}): {output}")]
    Exited { status: String, output: String },
    #[error(
        "nats-server did not accept connections on port {port} within {seconds}s; its log is {log}"
    )]
    NotReady {
        port: u16,
        seconds: u64,
        log: String,
    },
}

/// A running `nats-server` child process.
#[derive(Debug)]
pub struct LocalNatsServer {
    child: Option<Child>,
    binary: PathBuf,
    store_dir: PathBuf,
    port: u16,
    extra_args: Vec<String>,
    /// With users (`start_with_accounts`): the folder of their configuration and nkey seeds.
    auth_dir: Option<PathBuf>,
}

impl LocalNatsServer {
    /// Finds `nats-server`: `NATS_SERVER_BIN`, then `PATH`, then `/usr/sbin` and `/usr/local/bin`.
    pub fn find_binary() -> Result<PathBuf, LocalNatsError> {
        if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
            let path = PathBuf::from(path);
            if path.is_file() {
                return Ok(path);
            }
        }
        let path_dirs = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default();
        path_dirs
            .into_iter()
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
            .ok_or(LocalNatsError::NotFound)
    }

    /// Starts a server with JetStream stored under `store_dir`, on a free loopback port.
    pub fn start(store_dir: &Path) -> Result<Self, LocalNatsError> {
        Self::start_with_args(store_dir, &[])
    }

    /// Like [`LocalNatsServer::start`], with more `nats-server` arguments (e.g. `--user`, `--pass`).
    pub fn start_with_args(store_dir: &Path, extra_args: &[&str]) -> Result<Self, LocalNatsError> {
        Self::start_binary(&Self::find_binary()?, store_dir, extra_args)
    }

    /// Like [`LocalNatsServer::start_with_args`], with the `nats-server` at `binary` (a test that
    /// needs a given version).
    pub fn start_binary(
        binary: &Path,
        store_dir: &Path,
        extra_args: &[&str],
    ) -> Result<Self, LocalNatsError> {
        // another process may take the port between our probe and the server's bind: try a few
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::spawn_new(binary, store_dir, free_port()?, extra_args) {
                Err(LocalNatsError::NotReady { .. }) if attempts < 5 => continue,
                result => return result,
            }
        }
    }

    /// Starts a server that admits only the users generated from `registry` (the four services,
    /// read-only departments and supervisors, and `whistle-admin`), each logging in with the nkey
    /// seed at [`LocalNatsServer::seed_file`]; no anonymous access. Users and seeds are written to
    /// `<store_dir>/auth/` (existing seeds are kept, so a restart keeps every login).
    pub fn start_with_accounts(
        store_dir: &Path,
        registry: &crate::nats_accounts::Registry,
    ) -> Result<Self, LocalNatsError> {
        Self::start_binary_with_accounts(&Self::find_binary()?, store_dir, registry)
    }

    /// Like [`LocalNatsServer::start_with_accounts`], with the `nats-server` at `binary`.
    pub fn start_binary_with_accounts(
        binary: &Path,
        store_dir: &Path,
        registry: &crate::nats_accounts::Registry,
    ) -> Result<Self, LocalNatsError> {
        let auth_dir = store_dir.join("auth");
        std::fs::create_dir_all(&auth_dir).map_err(|error| LocalNatsError::StoreDir {
            dir: auth_dir.display().to_string(),
            error,
        })?;
        let config = crate::nats_accounts::write_local(&auth_dir, registry)
            .map_err(|error| LocalNatsError::Accounts(format!("{error:#}")))?;
        let config = config.display().to_string();
        let mut server = Self::start_binary(binary, store_dir, &["-c", &config])?;
        server.auth_dir = Some(auth_dir);
        Ok(server)
    }

    /// The nkey seed file of `user` on a server started with [`LocalNatsServer::start_with_accounts`].
    pub fn seed_file(&self, user: &str) -> Option<PathBuf> {
        self.auth_dir
            .as_ref()
            .map(|dir| crate::nats_accounts::seed_file(&dir.join("nkeys"), user))
    }

    /// Starts a server on a given port (used to restart one on the port its clients know).
    pub fn start_on_port(store_dir: &Path, port: u16) -> Result<Self, LocalNatsError> {
        Self::spawn_new(&Self::find_binary()?, store_dir, port, &[])
    }

    /// The version `binary` says it is (`nats-server --version`: `nats-server: v2.9.10`), without
    /// the leading `v`.
    pub fn version_of(binary: &Path) -> Option<String> {
        let output = Command::new(binary).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = text.split_whitespace().last()?.trim_start_matches('v');
        (output.status.success() && !version.is_empty()).then(|| version.to_string())
    }

    fn spawn_new(
        binary: &Path,
        store_dir: &Path,
        port: u16,
        extra_args: &[&str],
    ) -> Result<Self, LocalNatsError> {
        let binary = binary.to_path_buf();
        std::fs::create_dir_all(store_dir).map_err(|error| LocalNatsError::StoreDir {
            dir: store_dir.display().to_string(),
            error,
        })?;
        let mut server = Self {
            child: None,
            binary,
            store_dir: store_dir.to_path_buf(),
            port,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            auth_dir: None,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), LocalNatsError> {
        let log = self.log_path();
        let logged_before = std::fs::metadata(&log).map_or(0, |metadata| metadata.len() as usize);
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store_dir)
            .arg("-l")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // with -l the server logs to the file; what it cannot write there (the log file
            // itself unwritable) comes here and is shown if it exits at start
            .stderr(Stdio::piped())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if speaks_nats(self.port) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let mut output = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    use std::io::Read;
                    let _ = stderr.read_to_string(&mut output);
                }
                let logged = std::fs::read_to_string(&log).unwrap_or_default();
                self.child = None;
                return Err(LocalNatsError::Exited {
                    status: status.to_string(),
                    output: server_errors(logged.get(logged_before..).unwrap_or(&logged), &output),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(LocalNatsError::NotReady {
            port: self.port,
            seconds: 15,
            log: log.display().to_string(),
        })
    }

    fn log_path(&self) -> PathBuf {
        self.store_dir.join("nats-server.log")
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops with SIGTERM and waits (up to 10 s) so JetStream flushes; then kills.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store after `stop` or `kill`.
    pub fn restart(&mut self) -> Result<(), LocalNatsError> {
        self.stop();
        self.spawn()
    }
}

impl Drop for LocalNatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server's own error lines (`[FTL]`, `[ERR]`, or anything on stderr), without the pid and
/// time prefix; the last log lines when there are none.
fn server_errors(log: &str, stderr: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .filter_map(|line| {
            ["[FTL] ", "[ERR] "]
                .iter()
                .find_map(|level| line.find(level).map(|at| &line[at + level.len()..]))
        })
        .chain(stderr.lines().map(str::trim).filter(|line| {
            !line.is_empty() && !line.contains("[FTL] ") && !line.contains("[ERR] ")
        }))
        .collect();
    if errors.is_empty() {
        lines[lines.len().saturating_sub(3)..].join(" | ")
    } else {
        errors.join("; ")
    }
}

/// Whether the server on `port` greets like NATS (`INFO {...}`), not some other listener.
fn speaks_nats(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut greeting = [0u8; 4];
    stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO"
}

/// A loopback port that was free a moment ago, chosen below Linux's ephemeral range (32768 and up):
/// a port the kernel hands out for port 0 or for outgoing connections can be taken by any
/// connection the moment it is released, so a server restarted on the same port (a killed NATS or
/// service in a test) could find it in use. Ports below the range are only ever taken on purpose.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // one sequence per process, started at a point of its own: no port twice in a process, and
    // processes running side by side start far apart
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
    let _ = NEXT.compare_exchange(u32::MAX, seed % SPAN, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..SPAN {
        let candidate = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = u16::try_from(LOW + candidate).unwrap_or(20_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
