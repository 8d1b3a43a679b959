//! Room on the state folder's disk. Below a reserve nothing new is
//! accepted (the API and webhooks answer 503 saying why) or started (runs
//! wait in the queue); the runs going keep the reserve to finish in, and
//! everything goes on by itself once space returns.

use std::path::{Path, PathBuf};

/// The space kept free on the disk of `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReserve {
    pub dir: PathBuf,
    /// Bytes that must stay free.
    pub reserve: u64,
}

impl DiskReserve {
    /// The default reserve: 1 GiB.
    pub const DEFAULT: u64 = 1 << 30;

    /// Why nothing new may start now, or `None` when there is room (or the
    /// room cannot be told: that never blocks).
    pub fn short(&self) -> Option<String> {
        let free = match free_bytes(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("cannot tell the free space of {}: {e}", self.dir.display());
                return None;
            }
        };
        (free < self.reserve).then(|| {
            format!(
                "the disk of the state folder {} has {} free, less than the {} kept in reserve; new runs are refused until there is room",
                self.dir.display(),
                crate::cache::human(free),
                crate::cache::human(self.reserve)
            )
        })
    }
}

/// Bytes an unprivileged writer may still use on the disk holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_is_short_and_none_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let all = DiskReserve {
            dir: dir.path().into(),
            reserve: u64::MAX,
        };
        let why = all.short().expect("short of an impossible reserve");
        assert!(why.contains("free") && why.contains("reserve"), "{why}");
        let none = DiskReserve {
            dir: dir.path().into(),
            reserve: 0,
        };
        assert_eq!(none.short(), None);
    }
}
