//! What the kernel says about this process (Linux `/proc`): resident memory, CPU time,
//! context switches, and the machine's TCP socket memory.

use std::fs;

/// A field of `/proc/self/status` given in kB (`VmRSS`, `RssAnon`, `VmHWM` …), in KiB.
pub fn status_kib(field: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// CPU time used by the whole process so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// `utime + stime` of `/proc/self/stat`, in clock ticks (USER_HZ, 100 per second on
    /// Linux); counts threads that have exited.
    pub ticks: u64,
    /// The `stime` part of `ticks` (in the kernel: system calls, and on loopback the
    /// receiving side's TCP processing done in the sender's call).
    pub sys_ticks: u64,
    /// Sum over the live threads of the first field of `/proc/self/task/*/schedstat`:
    /// time on a CPU, nanoseconds.
    pub run_ns: u64,
    /// Sum over the live threads of `voluntary_ctxt_switches + nonvoluntary_ctxt_switches`
    /// (`/proc/self/task/*/status`): how often a thread went off a CPU.
    pub switches: u64,
}

/// Clock ticks per second of `/proc/*/stat` (USER_HZ; fixed at 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

impl Cpu {
    /// The process's CPU time now.
    pub fn now() -> Cpu {
        let (utime, sys_ticks) = fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after the command name (which may hold spaces) start at `state`
                // (field 3); utime and stime are fields 14 and 15.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some((
                    f.get(11)?.parse::<u64>().ok()?,
                    f.get(12)?.parse::<u64>().ok()?,
                ))
            })
            .unwrap_or((0, 0));
        let ticks = utime + sys_ticks;
        let (mut run_ns, mut switches) = (0, 0);
        if let Ok(tasks) = fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let path = task.path();
                if let Ok(s) = fs::read_to_string(path.join("schedstat")) {
                    run_ns += s
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
                if let Ok(s) = fs::read_to_string(path.join("status")) {
                    switches += s
                        .lines()
                        .filter(|l| l.contains("ctxt_switches:"))
                        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                        .sum::<u64>();
                }
            }
        }
        Cpu {
            ticks,
            sys_ticks,
            run_ns,
            switches,
        }
    }

    /// CPU seconds from `earlier` to `self`: from the tick counts, and from the threads'
    /// run times.
    pub fn since(&self, earlier: &Cpu) -> (f64, f64) {
        (
            self.ticks.saturating_sub(earlier.ticks) as f64 / TICKS_PER_SEC,
            self.run_ns.saturating_sub(earlier.run_ns) as f64 / 1e9,
        )
    }

    /// The share of the ticks from `earlier` to `self` spent in the kernel (0 when no tick
    /// passed).
    pub fn sys_share(&self, earlier: &Cpu) -> f64 {
        let all = self.ticks.saturating_sub(earlier.ticks);
        let sys = self.sys_ticks.saturating_sub(earlier.sys_ticks);
        if all == 0 {
            0.0
        } else {
            sys as f64 / all as f64
        }
    }
}

/// The machine's TCP socket buffer memory (`/proc/net/sockstat`, `TCP: … mem M`), in
/// KiB (the kernel gives pages; 4 KiB assumed). Both ends of every loopback connection
/// count, so this is not the node's alone.
pub fn tcp_socket_mem_kib() -> Option<u64> {
    let s = fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            return Some(words.next()?.parse::<u64>().ok()? * 4);
        }
    }
    None
}

/// Threads of this process.
pub fn threads() -> usize {
    fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}
