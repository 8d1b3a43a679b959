//! A swarm of two Docker daemons of the test's own, never this machine's:
//! each daemon in a network namespace of its own (its own bridges and
//! iptables), the two namespaces joined by a veth pair the test creates,
//! both daemons advertised on the veth addresses. The stage images are
//! loaded into each (`docker save` / `load`: nothing can be pulled here).
//! `sentinel run --executor swarm` runs in the manager's network namespace, where
//! its workspace archive server listens on the manager's veth address.
//! Everything is removed when the test ends, whatever happened.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::daemon::OwnDaemon;
use std::time::{Duration, Instant};

const SUBNET: &str = "192.168.214";

fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (this test needs root, iproute2 and docker.io)"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One node: a daemon in a namespace.
struct Node {
    ns: String,
    daemon: OwnDaemon,
}

impl std::ops::Deref for Node {
    type Target = OwnDaemon;
    fn deref(&self) -> &OwnDaemon {
        &self.daemon
    }
}

impl Node {
    /// A node of namespace `ns` in `dir`, not started yet. `nsenter --net`,
    /// not `ip netns exec`: that one mounts a sysfs of its own, hiding the
    /// cgroup mounts dockerd needs.
    fn new(ns: String, dir: PathBuf) -> Self {
        let launcher = ["nsenter".to_string(), format!("--net=/var/run/netns/{ns}")];
        let config = dir.join("daemon.json");
        let args = ["--config-file".to_string(), config.display().to_string()];
        Self {
            daemon: OwnDaemon::new(&dir, &launcher, &args),
            ns,
        }
    }

    fn start(&mut self) {
        // Its own configuration: what the set-up asks of every node.
        std::fs::write(
            self.dir.join("daemon.json"),
            r#"{"no-new-privileges": true}"#,
        )
        .unwrap();
        self.daemon.up();
        // The images, from this machine's daemon.
        self.daemon
            .load(&[crate::common::IMAGE, "sentinel/docker-cli:local"]);
    }

    /// Objects of a run left on this node.
    fn left(&self, run: &str, swarm_objects: bool) -> Vec<String> {
        let label = format!("label=dev.sentinel.run={run}");
        let mut lists = vec![
            vec!["ps", "-aq", "--filter", &label],
            vec!["volume", "ls", "-q", "--filter", &label],
            vec!["network", "ls", "-q", "--filter", &label],
        ];
        if swarm_objects {
            lists.push(vec!["service", "ls", "-q", "--filter", &label]);
            lists.push(vec!["secret", "ls", "-q", "--filter", &label]);
        }
        lists
            .iter()
            .flat_map(|args| {
                text(&self.docker(args))
                    .lines()
                    .map(|l| format!("{} on {}: {} {l}", args[0], self.ns, args[0]))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// The two nodes and their namespaces, removed when dropped.
struct Cluster {
    nodes: Vec<Node>,
    root: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.daemon.down();
            let _ = Command::new("ip").args(["netns", "del", &n.ns]).status();
        }
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "umount -R {0}/*/root/* 2>/dev/null; rm -rf {0}",
                    self.root.display()
                ),
            ])
            .status();
    }
}

fn cluster(root: &Path) -> Cluster {
    let id = std::process::id() % 100_000;
    let _ = std::fs::remove_dir_all(root);
    let mut c = Cluster {
        nodes: ["a", "b"]
            .iter()
            .map(|n| Node::new(format!("sntl-{n}-{id}"), root.join(n)))
            .collect(),
        root: root.to_path_buf(),
    };
    let (va, vb) = (format!("sva{id}"), format!("svb{id}"));
    let (a, b) = (c.nodes[0].ns.clone(), c.nodes[1].ns.clone());
    for args in [
        vec!["netns", "add", a.as_str()],
        vec!["netns", "add", b.as_str()],
        vec![
            "link",
            "add",
            va.as_str(),
            "type",
            "veth",
            "peer",
            "name",
            vb.as_str(),
        ],
        vec!["link", "set", va.as_str(), "netns", a.as_str()],
        vec!["link", "set", vb.as_str(), "netns", b.as_str()],
    ] {
        run_ok(
            Command::new("ip").args(&args),
            &format!("ip {}", args.join(" ")),
        );
    }
    for (ns, dev, addr) in [(&a, &va, 1), (&b, &vb, 2)] {
        let cidr = format!("{SUBNET}.{addr}/24");
        for args in [
            vec!["-n", ns.as_str(), "link", "set", "lo", "up"],
            vec![
                "-n",
                ns.as_str(),
                "addr",
                "add",
                cidr.as_str(),
                "dev",
                dev.as_str(),
            ],
            vec!["-n", ns.as_str(), "link", "set", dev.as_str(), "up"],
        ] {
            run_ok(
                Command::new("ip").args(&args),
                &format!("ip {}", args.join(" ")),
            );
        }
    }
    for n in &mut c.nodes {
        n.start();
    }
    let manager = format!("{SUBNET}.1");
    run_ok(
        Command::new("docker").args([
            "-H",
            &c.nodes[0].host(),
            "swarm",
            "init",
            "--advertise-addr",
            &manager,
            "--listen-addr",
            &format!("{manager}:2377"),
            "--default-addr-pool",
            "10.214.0.0/16",
        ]),
        "swarm init",
    );
    let token = text(&run_ok(
        Command::new("docker").args([
            "-H",
            &c.nodes[0].host(),
            "swarm",
            "join-token",
            "-q",
            "worker",
        ]),
        "join-token",
    ));
    let worker = format!("{SUBNET}.2");
    run_ok(
        Command::new("docker").args([
            "-H",
            &c.nodes[1].host(),
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &worker,
            "--listen-addr",
            &format!("{worker}:2377"),
            &format!("{manager}:2377"),
        ]),
        "swarm join",
    );
    c
}

const PIPELINE: &str = r#"version: 1
box: sentinel/busybox:local
defaults: {network: none, timeout: 120s}
stages:
  remote:
    placement: ['node.labels.sentinel-role == worker']
    run: |
      echo "node=$SENTINEL_NODE_ID"
      cat README.txt
      echo made-on-worker > from-worker.txt
      echo "where=worker" >> "$SENTINEL_OUTPUT"
      mkdir -p "$SENTINEL_ARTIFACTS"
      echo artifact > "$SENTINEL_ARTIFACTS/a.txt"
  manager:
    after: remote
    placement: ['node.role == manager']
    run: 'cat from-worker.txt; echo "node=$SENTINEL_NODE_ID"'
"#;

pub fn two_nodes() {
    let root =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("swarm-{}", std::process::id()));
    let c = cluster(&root);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let worker_id = text(&b.docker(&["info", "--format", "{{.Swarm.NodeID}}"]));
    let manager_id = text(&a.docker(&["info", "--format", "{{.Swarm.NodeID}}"]));
    assert!(!worker_id.is_empty() && !manager_id.is_empty());
    run_ok(
        Command::new("docker").args([
            "-H",
            &a.host(),
            "node",
            "update",
            "--label-add",
            "sentinel-role=worker",
            &worker_id,
        ]),
        "node update",
    );
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = text(&a.docker(&["node", "ls", "--format", "{{.Status}}"]));
        if ready.lines().filter(|l| *l == "Ready").count() == 2 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the worker never became ready: {ready}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each node's socket where the clean-up task looks for it: both
    // daemons share this machine's file system, so not at the usual path.
    let sockets = root.join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    for (n, id) in [(a, &manager_id), (b, &worker_id)] {
        std::os::unix::fs::symlink(n.dir.join("sock"), sockets.join(format!("{id}.sock"))).unwrap();
    }
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("sentinel.yml"), PIPELINE).unwrap();
    std::fs::write(src.join("README.txt"), "source file\n").unwrap();
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", a.ns))
        .arg(env!("CARGO_BIN_EXE_sentinel"))
        .args(["run", "--executor", "swarm"])
        .current_dir(&src)
        .env("DOCKER_HOST", a.host())
        .env("SENTINEL_SWARM_LISTEN", format!("{SUBNET}.1:0"))
        .env(
            "SENTINEL_SWARM_NODE_SOCKET",
            sockets.join("{{.Node.ID}}.sock"),
        )
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the run failed: {said}");
    let runs = src.join(".sentinel/results/run");
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .expect("a run folder")
        .file_name()
        .to_string_lossy()
        .into_owned();
    let dir = runs.join(&run);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("remote.json")).unwrap()).unwrap();
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["outputs"]["where"], "worker", "{doc}");
    assert_eq!(doc["artifacts"], "remote.zip", "{doc}");
    assert!(
        dir.join("remote.zip").is_file(),
        "the artifacts reached the results"
    );
    let log = std::fs::read_to_string(dir.join("remote.log")).unwrap();
    assert!(
        log.contains(&format!("node={worker_id}")) && log.contains("source file"),
        "the stage ran on the worker ({worker_id}) with the workspace: {log}"
    );
    let log = std::fs::read_to_string(dir.join("manager.log")).unwrap();
    assert!(
        log.contains("made-on-worker") && log.contains(&format!("node={manager_id}")),
        "the manager's stage saw the worker's file: {log}"
    );
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<String> = a
            .left(&run, true)
            .into_iter()
            .chain(b.left(&run, false))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "objects of the run remain on the nodes: {left:?}\n{said}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
