//! What the machine's CPUs did during a measured window, from the kernel's
//! counters (`/proc/stat`): busy, idle, and stolen by the hypervisor.
//!
//! On a virtual machine the host may run other guests on our CPUs; that
//! time is "steal", and a rate measured while 20 % of the CPUs were stolen
//! is not the rate of a quiet machine. Each benchmark prints the shares of
//! its measured window (and of its reference's, where it has one), so a
//! figure says under what conditions it was taken.

use std::fmt;
use std::time::Instant;

/// The machine-wide CPU counters at one moment, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CpuTicks {
    busy: u64,
    idle: u64,
    steal: u64,
}

impl CpuTicks {
    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        Self::parse(stat.lines().next()?)
    }

    /// The aggregate `cpu` line: user nice system idle iowait irq softirq
    /// steal (guest time is already inside user and nice).
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let t: Vec<u64> = fields
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = t.try_into().ok()?;
        Some(Self {
            busy: user + nice + system + irq + softirq,
            idle: idle + iowait,
            steal,
        })
    }

    /// The ticks spent since `earlier`; `None` if a counter went back.
    fn minus(self, earlier: Self) -> Option<Self> {
        Some(Self {
            busy: self.busy.checked_sub(earlier.busy)?,
            idle: self.idle.checked_sub(earlier.idle)?,
            steal: self.steal.checked_sub(earlier.steal)?,
        })
    }

    fn plus(self, other: Self) -> Self {
        Self {
            busy: self.busy + other.busy,
            idle: self.idle + other.idle,
            steal: self.steal + other.steal,
        }
    }

    /// These ticks (spent over some windows) as shares.
    fn shares(self) -> Option<CpuShares> {
        let total = (self.busy + self.idle + self.steal) as f64;
        (total > 0.0).then(|| CpuShares {
            busy: self.busy as f64 / total * 100.0,
            idle: self.idle as f64 / total * 100.0,
            steal: self.steal as f64 / total * 100.0,
        })
    }
}

/// Shares of all CPUs' time over a window, in percent (they sum to 100).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct CpuShares {
    pub(super) busy: f64,
    pub(super) idle: f64,
    pub(super) steal: f64,
}

impl fmt::Display for CpuShares {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "busy {:.1} %, idle {:.1} %, stolen by the hypervisor {:.1} %",
            self.busy, self.idle, self.steal
        )
    }
}

/// A window being measured: started now, read with [`CpuWindow::finish`].
pub(super) struct CpuWindow(Option<CpuTicks>);

impl CpuWindow {
    pub(super) fn start() -> Self {
        Self(CpuTicks::now())
    }

    /// The shares since the start; `None` off Linux or if the counters
    /// could not be read.
    pub(super) fn finish(self) -> Option<CpuShares> {
        self.spent()?.shares()
    }

    fn spent(self) -> Option<CpuTicks> {
        CpuTicks::now()?.minus(self.0?)
    }

    /// The window between two future instants, measured in the background
    /// so a load loop need not take part.
    pub(super) fn between(from: Instant, until: Instant) -> tokio::task::JoinHandle<CpuSum> {
        tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            let window = Self::start();
            tokio::time::sleep_until(until.into()).await;
            let mut sum = CpuSum::default();
            sum.add(window);
            sum
        })
    }
}

/// Several windows added up (every other slice of a run, say).
#[derive(Default)]
pub(super) struct CpuSum(Option<CpuTicks>);

impl CpuSum {
    /// Adds the window from its start until now.
    pub(super) fn add(&mut self, window: CpuWindow) {
        self.merge(CpuSum(window.spent()));
    }

    /// Adds another sum's windows.
    pub(super) fn merge(&mut self, other: CpuSum) {
        if let Some(spent) = other.0 {
            self.0 = Some(self.0.map_or(spent, |sum| sum.plus(spent)));
        }
    }

    pub(super) fn shares(&self) -> Option<CpuShares> {
        self.0?.shares()
    }
}

/// The line a summary prints: `  cpu          busy …` or why there is none.
pub(super) fn cpu_line(label: &str, shares: Option<CpuShares>) -> String {
    match shares {
        Some(shares) => format!("  {label:<12} {shares}"),
        None => format!("  {label:<12} n/a (no /proc/stat)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticks(busy: u64, idle: u64, steal: u64) -> CpuTicks {
        CpuTicks { busy, idle, steal }
    }

    #[test]
    fn the_cpu_line_is_split_into_busy_idle_and_steal() {
        let parsed = CpuTicks::parse("cpu  100 5 20 300 10 1 4 60 7 0").unwrap();
        assert_eq!(parsed, ticks(130, 310, 60));
        assert_eq!(CpuTicks::parse("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(CpuTicks::parse("cpu 1 2 3"), None);
    }

    #[test]
    fn shares_are_of_the_window_and_sum_to_100() {
        let before = ticks(1000, 500, 10);
        let after = ticks(1160, 520, 30);
        let shares = after.minus(before).and_then(CpuTicks::shares).unwrap();
        assert_eq!((shares.busy, shares.idle, shares.steal), (80.0, 10.0, 10.0));
        assert_eq!(before.minus(after), None, "counters never run backwards");
        assert_eq!(
            before.minus(before).and_then(CpuTicks::shares),
            None,
            "an empty window has no shares"
        );
        assert_eq!(
            shares.to_string(),
            "busy 80.0 %, idle 10.0 %, stolen by the hypervisor 10.0 %"
        );
    }

    #[test]
    fn windows_add_up_before_they_become_shares() {
        let a = ticks(90, 0, 10);
        let b = ticks(10, 90, 0);
        let shares = a.plus(b).shares().unwrap();
        assert_eq!((shares.busy, shares.idle, shares.steal), (50.0, 45.0, 5.0));
        assert_eq!(CpuSum::default().shares(), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_has_counters() {
        assert!(CpuTicks::now().is_some());
        let mut sum = CpuSum::default();
        sum.add(CpuWindow::start());
        assert!(sum.0.is_some(), "a window that was read adds up");
        let before = sum.0.unwrap();
        sum.merge(CpuSum(Some(before)));
        assert_eq!(sum.0, Some(before.plus(before)));
    }
}
