//! The workspace's own binaries, spawned as child processes for end-to-end tests.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::http::try_http_get;
use crate::process::{LogFile, Proc};

/// The built binary `name` of this workspace: `target/<profile>/<name>`.
///
/// Found next to the running test executable, which cargo puts in
/// `target/<profile>/deps/`, so it follows `--release` and `CARGO_TARGET_DIR`.
/// Cargo only builds a package's own binaries before its tests, hence the
/// workspace-wide build the message asks for.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot find the running test executable: {e}"));
    let mut dir = exe
        .parent()
        .unwrap_or_else(|| panic!("test executable {} has no parent directory", exe.display()))
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "binary {name} not built; run `cargo build --workspace --bins` first (looked for {})",
            path.display()
        );
    }
    path
}

/// A spawned workspace binary; SIGKILLed when dropped.
///
/// Output (stdout and stderr together) goes to a temp file: [`Service::logs`]
/// returns it, and it is printed when the service is dropped during a panic,
/// so a failed test shows what the service said.
pub struct Service {
    name: String,
    proc: Proc,
    log: LogFile,
}

impl Service {
    /// Starts the workspace binary `name` with `args` and extra environment `env`.
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Service {
        let path = bin_path(name);
        let mut cmd = Command::new(&path);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = LogFile::new();
        let proc = Proc::spawn(cmd, &log)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        Service {
            name: name.to_string(),
            proc,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Everything the service wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        self.log.read()
    }

    /// SIGKILL: a crash, with no chance to drain.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM: asks the service to drain and exit; see [`Service::wait_exit`].
    pub fn terminate(&mut self) {
        self.proc.terminate();
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout)
    }

    /// Polls `url` until it answers 200; panics with the service's logs when
    /// `timeout` passes or the process exits first.
    pub async fn wait_http_ok(&self, url: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.exited() {
                panic!(
                    "{} exited ({status}) while waiting for {url} to answer 200\n--- {} logs ---\n{}",
                    self.name,
                    self.name,
                    self.logs()
                );
            }
            let last = match try_http_get(url, Duration::from_secs(2)).await {
                Ok((200, _)) => return,
                Ok((status, body)) => format!("status {status}: {body}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                panic!(
                    "{} did not answer 200 on {url} within {timeout:?} (last: {last})\n--- {} logs ---\n{}",
                    self.name,
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.proc.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}) logs ---\n{}",
                self.name,
                self.proc.pid(),
                self.logs()
            );
        }
    }
}
