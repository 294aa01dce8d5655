//! What the kernel says about this process (Linux `/proc/self`): resident memory, threads, and
//! CPU time per thread, so the LCM's share can be told from the simulator's by thread name.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

/// `/proc` counts CPU time in clock ticks of `USER_HZ`, which Linux fixes at 100 per second.
const TICKS_PER_SECOND: u64 = 100;

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(field: &str) -> Option<u64> {
    status_value(field)
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The `Threads` field of `/proc/self/status`.
pub fn threads() -> Option<u64> {
    status_value("Threads")?.trim().parse().ok()
}

fn status_value(field: &str) -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().to_owned())
    })
}

/// CPU time used, split as the kernel accounts it: in the program (`utime`) and in the
/// kernel on its behalf (`stime`: system calls, the loopback TCP, the file system).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    pub user: Duration,
    pub kernel: Duration,
}

impl Cpu {
    pub fn total(self) -> Duration {
        self.user + self.kernel
    }

    pub fn since(self, before: Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(before.user),
            kernel: self.kernel.saturating_sub(before.kernel),
        }
    }
}

impl std::iter::Sum for Cpu {
    fn sum<I: Iterator<Item = Cpu>>(iter: I) -> Cpu {
        iter.fold(Cpu::default(), |sum, cpu| Cpu {
            user: sum.user + cpu.user,
            kernel: sum.kernel + cpu.kernel,
        })
    }
}

/// One live thread: its name, the CPU time it has used, and its `/proc` directory.
#[derive(Debug, Clone)]
struct Thread {
    name: String,
    cpu: Cpu,
    dir: PathBuf,
}

/// Every live thread of the process. A thread that has exited is no longer listed (its time
/// still counts in [`process_cpu`]).
fn threads_now() -> Vec<Thread> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let dir = task.path();
            let stat = fs::read_to_string(dir.join("stat")).ok()?;
            // The name sits in parentheses and may hold spaces: split after the last ')'.
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let name = stat.get(open + 1..close)?.to_owned();
            Some(Thread {
                name,
                cpu: cpu_after_name(stat.get(close + 1..)?)?,
                dir,
            })
        })
        .collect()
}

/// What threads passed to the kernel's write calls (`/proc/self/task/*/io`): bytes and calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    pub calls: u64,
}

impl Written {
    pub fn since(self, before: Written) -> Written {
        Written {
            bytes: self.bytes.saturating_sub(before.bytes),
            calls: self.calls.saturating_sub(before.calls),
        }
    }
}

/// The writes of the live threads named `name` (`wchar` and `syscw`); `None` if there is no
/// such thread or the kernel does not tell (no per-task I/O accounting).
pub fn written_by(name: &str) -> Option<Written> {
    let named: Vec<Thread> = threads_now()
        .into_iter()
        .filter(|t| t.name == name)
        .collect();
    if named.is_empty() {
        return None;
    }
    named.iter().try_fold(Written::default(), |sum, thread| {
        let written = io_written(&fs::read_to_string(thread.dir.join("io")).ok()?)?;
        Some(Written {
            bytes: sum.bytes + written.bytes,
            calls: sum.calls + written.calls,
        })
    })
}

/// `wchar` and `syscw` of an `io` file.
fn io_written(io: &str) -> Option<Written> {
    let field = |name: &str| {
        io.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
    };
    Some(Written {
        bytes: field("wchar")?,
        calls: field("syscw")?,
    })
}

/// CPU time of the live threads whose name starts with `prefix`.
pub fn cpu_of_threads(prefix: &str) -> Cpu {
    threads_now()
        .into_iter()
        .filter(|t| t.name.starts_with(prefix))
        .map(|t| t.cpu)
        .sum()
}

/// How many live threads have a name starting with `prefix`, by name.
pub fn threads_named(prefix: &str) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for thread in threads_now() {
        if !thread.name.starts_with(prefix) {
            continue;
        }
        match counts.iter_mut().find(|(name, _)| *name == thread.name) {
            Some((_, count)) => *count += 1,
            None => counts.push((thread.name, 1)),
        }
    }
    counts.sort();
    counts
}

/// CPU time of the whole process, every thread included.
pub fn process_cpu() -> Cpu {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let close = stat.rfind(')')?;
            cpu_after_name(stat.get(close + 1..)?)
        })
        .unwrap_or_default()
}

/// `utime` and `stime` are fields 14 and 15 of a `stat` line; after the name, field 3 (the
/// state) comes first, so they are the 12th and 13th words.
fn cpu_after_name(rest: &str) -> Option<Cpu> {
    let mut words = rest.split_whitespace().skip(11);
    let mut ticks = || -> Option<Duration> {
        let ticks: u64 = words.next()?.parse().ok()?;
        Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
    };
    Some(Cpu {
        user: ticks()?,
        kernel: ticks()?,
    })
}

/// The soft limit on open files (`ulimit -n`).
pub fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(status_bytes("VmRSS").unwrap_or(0) > 0);
        assert!(status_bytes("VmHWM").unwrap_or(0) > 0);
        assert!(threads().unwrap_or(0) >= 1);
        assert!(!threads_now().is_empty());
    }

    #[test]
    fn counts_what_a_named_thread_writes() {
        let name = "bench-io-test";
        let file = tempfile::tempfile().unwrap();
        let written = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                use std::io::Write;
                let before = written_by(name).unwrap();
                (&file).write_all(&[0; 4096]).unwrap();
                (&file).write_all(&[0; 100]).unwrap();
                written_by(name).unwrap().since(before)
            })
            .unwrap()
            .join()
            .unwrap();
        let expected = Written {
            bytes: 4196,
            calls: 2,
        };
        assert_eq!(written, expected);
        assert_eq!(written_by("no such thread"), None);
    }

    #[test]
    fn parses_a_stat_line() {
        let rest = " R 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        let cpu = Cpu {
            user: Duration::from_millis(2500),
            kernel: Duration::from_millis(500),
        };
        assert_eq!(cpu_after_name(rest), Some(cpu));
        assert_eq!(cpu.total(), Duration::from_millis(3000));
    }
}
