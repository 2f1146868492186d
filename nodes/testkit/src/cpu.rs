//! CPU time from `/proc`: of one process, and of the whole machine split into busy, idle and
//! stolen (a VM's vCPU waiting for its host). A benchmark mode that got less CPU than another
//! shows here where the rest went.

/// USER_HZ is 100 on every Linux ABI the node ships for.
const TICKS_PER_S: f64 = 100.0;

/// CPU time process `pid` used so far (user + system), in seconds; `None` once it is gone.
pub fn process_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / TICKS_PER_S)
}

/// The machine's CPU seconds since boot, all cores together.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MachineCpu {
    pub busy: f64,
    pub idle: f64,
    pub steal: f64,
}

impl MachineCpu {
    pub fn read() -> Option<MachineCpu> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq steal (guest
    /// time is already counted in user).
    pub fn parse(stat: &str) -> Option<MachineCpu> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<f64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0.0)).collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0.0) / TICKS_PER_S;
        Some(MachineCpu { busy: at(0) + at(1) + at(2) + at(5) + at(6), idle: at(3) + at(4), steal: at(7) })
    }

    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &MachineCpu) -> MachineCpu {
        MachineCpu { busy: self.busy - earlier.busy, idle: self.idle - earlier.idle, steal: self.steal - earlier.steal }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_splits_into_busy_idle_and_steal() {
        let stat = "cpu  572070 10 44641 140422 2345 0 3590 9354 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        let m = MachineCpu::parse(stat).expect("parsed");
        assert!((m.busy - (572_070.0 + 10.0 + 44_641.0 + 3_590.0) / 100.0).abs() < 1e-6, "{m:?}");
        assert!((m.idle - (140_422.0 + 2_345.0) / 100.0).abs() < 1e-6, "{m:?}");
        assert!((m.steal - 93.54).abs() < 1e-6, "{m:?}");
        let later = MachineCpu { busy: m.busy + 2.0, idle: m.idle + 1.0, steal: m.steal + 0.5 };
        assert_eq!(later.since(&m).steal, 0.5);
        assert_eq!(MachineCpu::parse("intr 1 2 3\n"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu_and_a_missing_one_none() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {}
        assert!(process_seconds(std::process::id()).is_some_and(|s| s > 0.0));
        assert_eq!(process_seconds(u32::MAX), None);
    }
}
