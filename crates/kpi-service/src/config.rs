//! The one error shape of a setting that cannot work, shared by every service's typed config.
//!
//! Every service parses its flags into a clap struct, turns them into typed
//! settings with `settings()` and checks them with `validate()` before any
//! port is bound or the bus is dialled; a refusal names the flag, so the
//! binary exits with `invalid configuration: --flag: what is wrong`.

/// A setting that cannot work; reported before anything is bound or connected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    /// The flag (`--max-batch`) or group of flags (`bus layout`) at fault.
    pub setting: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            setting,
            problem: problem.into(),
        }
    }
}
