//! Who owns a run: the process id, its start time and the machine's boot id.
//! A lease whose owner is gone marks a dead run; the same identity labels
//! containers, so the reaper can tell leftovers of dead processes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use sentinel_api::RunId;

/// A process, identified well enough to survive pid reuse and reboots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// The process's start time in clock ticks since boot (`/proc/PID/stat`).
    pub start_ticks: u64,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// The process's PID namespace (the inode of `/proc/self/ns/pid`): a
    /// process in another one (a server in a container sharing the Docker
    /// engine) cannot be seen from here. Empty when written by an older
    /// Sentinel.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pid_ns: String,
}

fn pid_ns() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|l| {
            l.to_string_lossy()
                .chars()
                .filter(char::is_ascii_digit)
                .collect()
        })
        .unwrap_or_default()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields restart after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Owner {
    /// This process.
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            boot_id: boot_id(),
            pid_ns: pid_ns(),
        }
    }

    /// True while the owning process still runs on this machine.
    /// A process of another PID namespace cannot be checked from here, so
    /// it counts as alive: its containers are never reaped by a process
    /// that cannot see it (its own server's recovery ends its runs).
    pub fn is_alive(&self) -> bool {
        if self.boot_id != boot_id() {
            return false;
        }
        let here = pid_ns();
        if !self.pid_ns.is_empty() && !here.is_empty() && self.pid_ns != here {
            return true;
        }
        start_ticks(self.pid) == Some(self.start_ticks)
    }

    /// A compact text form, used as a container label.
    pub fn label(&self) -> String {
        match self.pid_ns.as_str() {
            "" => format!("{}:{}:{}", self.boot_id, self.pid, self.start_ticks),
            ns => format!("{}:{ns}:{}:{}", self.boot_id, self.pid, self.start_ticks),
        }
    }

    /// Parses [`Owner::label`] (and the older form without the namespace).
    pub fn from_label(s: &str) -> Option<Self> {
        let mut it = s.rsplitn(3, ':');
        let start_ticks = it.next()?.parse().ok()?;
        let pid = it.next()?.parse().ok()?;
        let rest = it.next()?;
        let (boot_id, pid_ns) = match rest.rsplit_once(':') {
            Some((boot, ns)) if !ns.is_empty() && ns.bytes().all(|b| b.is_ascii_digit()) => {
                (boot.to_string(), ns.to_string())
            }
            _ => (rest.to_string(), String::new()),
        };
        Some(Self {
            pid,
            start_ticks,
            boot_id,
            pid_ns,
        })
    }
}

/// A run held by a live process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub run_id: RunId,
    pub owner: Owner,
    pub heartbeat: DateTime<Utc>,
}

impl Lease {
    /// True when the owner is gone (the heartbeat is informative: a local
    /// run's owner is checked directly).
    pub fn is_dead(&self) -> bool {
        !self.owner.is_alive()
    }
}

/// Renews `lease` in `store` every 10 s until the task is aborted.
pub fn keep_alive(
    store: std::sync::Arc<dyn crate::ports::Store>,
    lease: Lease,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tick.tick().await;
            let lease = Lease {
                heartbeat: Utc::now(),
                ..lease.clone()
            };
            if let Err(e) = store.put_lease(&lease).await {
                tracing::warn!("cannot renew the run's lease: {e}");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive() {
        let me = Owner::current();
        assert!(me.pid > 0 && me.start_ticks > 0 && !me.boot_id.is_empty());
        assert!(me.is_alive());
        assert_eq!(Owner::from_label(&me.label()), Some(me.clone()));
        let other = Owner {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(!other.is_alive(), "a reused pid is not the same process");
        let rebooted = Owner {
            boot_id: "another-boot".into(),
            ..me.clone()
        };
        assert!(!rebooted.is_alive());
        // A process of another PID namespace (a server in a container)
        // cannot be seen from here: never taken for dead.
        let elsewhere = Owner {
            pid_ns: "1".into(),
            pid: 999_999,
            ..me.clone()
        };
        assert!(elsewhere.is_alive());
        assert_eq!(Owner::from_label(&elsewhere.label()), Some(elsewhere));
        // Labels written before the namespace was part of them still read.
        let old = format!("{}:{}:{}", me.boot_id, me.pid, me.start_ticks);
        let read = Owner::from_label(&old).unwrap();
        assert_eq!((read.pid, read.pid_ns.as_str()), (me.pid, ""));
        assert!(read.is_alive());
    }
}
