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
        }
    }

    /// True while the owning process still runs on this machine.
    pub fn is_alive(&self) -> bool {
        self.boot_id == boot_id() && start_ticks(self.pid) == Some(self.start_ticks)
    }

    /// A compact text form, used as a container label.
    pub fn label(&self) -> String {
        format!("{}:{}:{}", self.boot_id, self.pid, self.start_ticks)
    }

    /// Parses [`Owner::label`].
    pub fn from_label(s: &str) -> Option<Self> {
        let mut it = s.rsplitn(3, ':');
        let start_ticks = it.next()?.parse().ok()?;
        let pid = it.next()?.parse().ok()?;
        let boot_id = it.next()?.to_string();
        Some(Self {
            pid,
            start_ticks,
            boot_id,
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
            ..me
        };
        assert!(!rebooted.is_alive());
    }
}
