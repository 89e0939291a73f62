//! CPU time and resident memory of a process, read from /proc.

use anyhow::Context;

/// Clock ticks per second of `utime`/`stime` in /proc/<pid>/stat. Linux has
/// used 100 (USER_HZ) on every mainstream architecture for decades; reading it
/// with sysconf would need unsafe code, which the workspace forbids.
const TICKS_PER_SEC: f64 = 100.0;

/// User plus system CPU seconds the process has used so far.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let raw = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after its ')' are plain.
    let rest = raw
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is index 0, so utime (field 14) is index 11, stime index 12.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / TICKS_PER_SEC)
}

/// Resident set size in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let raw = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = raw
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS")?
        .parse()?;
    Ok(kib * 1024)
}

/// The process's command name (`/proc/<pid>/comm`), e.g. `kpi-gateway`.
pub fn name(pid: u32) -> anyhow::Result<String> {
    let raw = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .with_context(|| format!("reading /proc/{pid}/comm"))?;
    Ok(raw.trim().to_string())
}

/// CPU seconds so far of each process, with its label.
pub fn cpu_each(pids: &[(u32, String)]) -> Vec<(u32, String, f64)> {
    pids.iter()
        .filter_map(|(p, label)| Some((*p, label.clone(), cpu_secs(*p).ok()?)))
        .collect()
}

/// CPU seconds each process name used between two [`cpu_each`] readings;
/// processes of the same name are added up.
pub fn cpu_by_name(
    before: &[(u32, String, f64)],
    after: &[(u32, String, f64)],
) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    for (pid, name, end) in after {
        let start = before
            .iter()
            .find(|(p, _, _)| p == pid)
            .map_or(0.0, |(_, _, c)| *c);
        *by_name.entry(name.clone()).or_insert(0.0) += end - start;
    }
    by_name
}

/// CPU seconds the whole machine has spent busy (user, nice, system, irq,
/// softirq, steal) since boot, from the first line of /proc/stat.
pub fn machine_busy_secs() -> anyhow::Result<f64> {
    let raw = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = raw.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<f64>())
        .collect::<Result<_, _>>()
        .context("malformed /proc/stat")?;
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| ticks.get(*i))
        .sum();
    Ok(busy / TICKS_PER_SEC)
}

pub fn total_rss(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|p| rss_bytes(*p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(cpu_secs(pid).is_ok_and(|c| c >= 0.0));
        assert!(rss_bytes(pid).is_ok_and(|r| r > 0));
        assert!(machine_busy_secs().is_ok_and(|c| c >= cpu_secs(pid).unwrap_or(0.0)));
    }
}
