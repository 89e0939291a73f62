//! A child process whose output goes to a temp file, killed when dropped.
//!
//! Shared by [`crate::NatsServer`] and [`crate::Service`]. Output goes to a
//! file rather than a pipe so a chatty process can never block on a full pipe
//! nobody reads, and so a failing test can print everything it said.

use std::fs::File;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::NamedTempFile;

/// Where a process's stdout and stderr go; outlives restarts of the process.
pub(crate) struct LogFile {
    file: NamedTempFile,
}

impl LogFile {
    pub(crate) fn new() -> LogFile {
        let file = NamedTempFile::new()
            .unwrap_or_else(|e| panic!("cannot create a temp file for process output: {e}"));
        LogFile { file }
    }

    fn stdio(&self) -> Stdio {
        // Clones share one file offset, so stdout and stderr interleave in
        // the order they were written instead of overwriting each other.
        let f: File = self
            .file
            .as_file()
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot reopen the process output file: {e}"));
        Stdio::from(f)
    }

    /// Everything written so far (lossy UTF-8).
    pub(crate) fn read(&self) -> String {
        let mut raw = Vec::new();
        match File::open(self.file.path()).and_then(|mut f| f.read_to_end(&mut raw)) {
            Ok(_) => String::from_utf8_lossy(&raw).into_owned(),
            Err(e) => format!("<cannot read {}: {e}>", self.file.path().display()),
        }
    }
}

/// A running child. The `Child` sits behind a mutex so that `&self` methods
/// (a health poll that checks whether the process died) can reap it too.
pub(crate) struct Proc {
    child: Mutex<Child>,
    pid: u32,
}

impl Proc {
    pub(crate) fn spawn(mut cmd: Command, log: &LogFile) -> std::io::Result<Proc> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.stdio())
            .stderr(log.stdio())
            .spawn()?;
        let pid = child.id();
        Ok(Proc {
            child: Mutex::new(child),
            pid,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        // A panic while holding the lock leaves the Child itself intact.
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exit status if the process has exited (and reaps it), else `None`.
    pub(crate) fn exited(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// SIGKILL, then reap so no zombie holds the pid or the ports.
    pub(crate) fn kill(&self) {
        let mut child = self.child();
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// SIGTERM through the `kill` command: the workspace forbids the unsafe
    /// code a direct `libc::kill` would need.
    pub(crate) fn terminate(&self) {
        if self.exited().is_some() {
            return;
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run `kill -TERM {}`: {e}", self.pid));
        // The process may have exited between the check and the signal.
        if !status.success() && self.exited().is_none() {
            panic!("`kill -TERM {}` failed: {status}", self.pid);
        }
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub(crate) fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
