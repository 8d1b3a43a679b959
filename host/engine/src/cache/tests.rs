//! The cache's lookup order, eviction and round trip through a folder.

use super::*;

fn entry(key: &str, branch: &str, size: u64, age_s: i64, used_s: i64) -> Entry {
    let now = Utc::now();
    Entry {
        key: key.into(),
        branch: branch.into(),
        object: format!("{branch}/{key}"),
        size,
        created: now - chrono::Duration::seconds(age_s),
        last_used: now - chrono::Duration::seconds(used_s),
    }
}

fn scope(branch: &str) -> Scope {
    Scope {
        project: "acme/app".into(),
        branch: branch.into(),
        default_branch: "main".into(),
        write: true,
    }
}

#[test]
fn lookup_goes_exact_then_prefix_then_restore_keys_then_default_branch() {
    let ttl = Duration::from_secs(3600);
    let entries = vec![
        entry("deps-aaa", "main", 1, 300, 300),
        entry("deps-bbb", "main", 1, 100, 100),
        entry("deps-ccc", "feature", 1, 200, 200),
        entry("other-x", "feature", 1, 50, 50),
    ];
    let now = Utc::now();
    let find = |b: &str, k: &str, r: &[&str]| {
        let r: Vec<String> = r.iter().map(|s| s.to_string()).collect();
        lookup(&entries, now, ttl, &scope(b), k, &r).map(|(i, res)| (entries[i].key.clone(), res))
    };
    assert_eq!(
        find("main", "deps-aaa", &[]),
        Some(("deps-aaa".into(), CacheResult::Hit))
    );
    // The branch's own prefix match before the default branch's exact one.
    assert_eq!(
        find("feature", "deps-", &[]),
        Some(("deps-ccc".into(), CacheResult::Partial))
    );
    assert_eq!(
        find("feature", "deps-bbb", &[]),
        Some(("deps-bbb".into(), CacheResult::Hit))
    );
    // Restore keys in order; the newest match of the first that matches.
    assert_eq!(
        find("main", "deps-zzz", &["nope-", "deps-"]),
        Some(("deps-bbb".into(), CacheResult::Partial))
    );
    assert_eq!(
        find("feature", "x", &["other-"]),
        Some(("other-x".into(), CacheResult::Partial))
    );
    assert_eq!(find("main", "x", &["other-"]), None);
    // Expired entries are not found.
    let old = vec![entry("deps-aaa", "main", 1, 9000, 9000)];
    assert_eq!(
        lookup(&old, now, ttl, &scope("main"), "deps-aaa", &[]),
        None
    );
}

#[test]
fn eviction_takes_expired_then_least_recently_used() {
    let policy = CachePolicy {
        budget: 25,
        ttl: Duration::from_secs(3600),
        max_entry: 100,
    };
    let mut entries = vec![
        entry("expired", "main", 1, 9000, 9000),
        entry("used-long-ago", "main", 10, 500, 400),
        entry("used-recently", "main", 10, 600, 10),
        entry("new", "main", 10, 0, 0),
    ];
    let gone = evict(&mut entries, Utc::now(), &policy, "main/new");
    let names: Vec<_> = gone.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(names, ["expired", "used-long-ago"]);
    let left: Vec<_> = entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(left, ["used-recently", "new"]);
    // The entry just saved stays even when it alone is over the budget.
    let mut alone = vec![entry("big", "main", 100, 0, 0)];
    assert!(evict(&mut alone, Utc::now(), &policy, "main/big").is_empty());
}

/// The keys of `acme/app`'s entries, as `entries` lists them.
async fn keys(cache: &Cache) -> Vec<String> {
    cache
        .entries("acme/app")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect()
}

#[tokio::test]
async fn entries_round_trip_through_a_folder_and_the_budget_evicts() {
    let dir = tempfile::tempdir().unwrap();
    let policy = CachePolicy {
        budget: 2500,
        ..CachePolicy::default()
    };
    let cache = Cache::new(Arc::new(CacheDir::new(dir.path().join("cache"))), policy);
    let s = scope("main");
    let file = |n: usize| {
        let p = dir.path().join(format!("in-{n}"));
        std::fs::write(&p, vec![n as u8; 1000]).unwrap();
        p
    };
    assert_eq!(
        cache.save(&s, "k-1", &file(1)).await.unwrap(),
        Saved::Stored { evicted: 0 }
    );
    assert_eq!(
        cache.save(&s, "k-1", &file(1)).await.unwrap(),
        Saved::Exists
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        cache.save(&s, "k-2", &file(2)).await.unwrap(),
        Saved::Stored { evicted: 0 }
    );
    // k-1 used since: k-2 is now the least recently used.
    let out = dir.path().join("out");
    let (e, r) = cache.restore(&s, "k-1", &[], &out).await.unwrap().unwrap();
    assert_eq!((e.key.as_str(), r), ("k-1", CacheResult::Hit));
    assert_eq!(std::fs::read(&out).unwrap(), vec![1u8; 1000]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        cache.save(&s, "k-3", &file(3)).await.unwrap(),
        Saved::Stored { evicted: 1 }
    );
    let keys = keys(&cache).await;
    assert_eq!(keys, ["k-3", "k-1"]);
    // The evicted entry's object is gone too.
    let objects = walkdir::WalkDir::new(dir.path().join("cache"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "tar"))
        .count();
    assert_eq!(objects, 2);
    // The newest prefix match wins.
    let (e, r) = cache
        .restore(&s, "k-9", &["k-".into()], &out)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((e.key.as_str(), r), ("k-3", CacheResult::Partial));
}

/// Retention's pass applies the policy without a save: entries unused past
/// the time to live, then the least recently used past the budget, go —
/// from the index and from the backend.
#[tokio::test]
async fn a_sweep_applies_the_policy_without_a_save() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(CacheDir::new(dir.path().join("cache")));
    let cache = Cache::new(backend.clone(), CachePolicy::default());
    let s = scope("main");
    for n in 1..=3u8 {
        let p = dir.path().join(format!("in-{n}"));
        std::fs::write(&p, vec![n; 1000]).unwrap();
        cache.save(&s, &format!("k-{n}"), &p).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        cache.sweep("acme/app").await.unwrap(),
        (0, 0),
        "all within the policy"
    );
    let tighter = Cache::new(
        backend.clone(),
        CachePolicy {
            budget: 2000,
            ..CachePolicy::default()
        },
    );
    assert_eq!(
        tighter.sweep("acme/app").await.unwrap(),
        (1, 1000),
        "the oldest goes"
    );
    let left = keys(&tighter).await;
    assert_eq!(left, ["k-3", "k-2"]);
    let expired = Cache::new(
        backend,
        CachePolicy {
            ttl: Duration::from_millis(1),
            ..CachePolicy::default()
        },
    );
    assert_eq!(
        expired.sweep("acme/app").await.unwrap().0,
        2,
        "unused past the time to live"
    );
    let objects = walk(&dir.path().join("cache"));
    assert!(
        objects.iter().all(|p| p.ends_with("index.json")),
        "the entries' objects are gone too: {objects:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
