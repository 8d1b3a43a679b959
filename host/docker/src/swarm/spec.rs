//! The services of a Swarm stage: the helper tasks that bring its
//! workspace to a node and send it back (root with only the capabilities
//! that give files away; the slot's URL in a Swarm secret), and the stage's
//! own task (its image, its user, every capability dropped, limits as Swarm
//! resources, the two volumes at `/workspace` and `/sentinel`, `/tmp` a
//! tmpfs, its secrets in a Swarm secret, the node's name in its
//! environment).

use std::collections::HashMap;

use bollard::models::{
    Limit, Mount, MountTmpfsOptions, MountType, MountVolumeOptions, NetworkAttachmentConfig,
    TaskSpecContainerSpec, TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets,
    TaskSpecResources,
};

use sentinel_engine::exec::{PRIVATE_MOUNT, StageJob, WORKSPACE_MOUNT, Work};

use super::task::Job;

/// Where a helper finds its slot's URL.
pub(crate) const TRANSFER_MOUNT: &str = "/run/sentinel/transfer";
/// The file a stage's shell leaves when its node gave it no
/// `no-new-privileges`.
pub(crate) const NO_NNP: &str = "no-new-privileges-missing";

/// The start of every stage's shell: a stage never runs its script without
/// `no-new-privileges` (API 1.41 services cannot ask for it; the node's
/// daemon gives it to every container when configured so).
pub(crate) fn nnp_check() -> String {
    format!(
        "nnp=; while read -r k v; do [ \"$k\" = NoNewPrivs: ] && nnp=$v; done < /proc/self/status; \
         [ \"$nnp\" = 1 ] || {{ : > {PRIVATE_MOUNT}/{NO_NNP}; exit 125; }}\n"
    )
}

// The archives live in the helper's own layer (removed with it). The
// slot's file sets `host`, `port` and `path`. The upload is HTTP/1.0
// written by hand through `nc`: busybox's wget posts text only.
pub(crate) const FILL: &str = "set -e\n. /run/sentinel/transfer\n\
wget -q -O /mnt/in.tar \"http://$host:$port$path/in\"\ntar -x -f /mnt/in.tar -C /mnt\nrm -f /mnt/in.tar\n";
pub(crate) const DRAIN: &str = r#"set -e
. /run/sentinel/transfer
cd /mnt
tar -c -f /mnt/out.tar w p
n=$(wc -c < /mnt/out.tar)
r=$( { printf 'POST %s/out HTTP/1.0\r\nContent-Length: %s\r\n\r\n' "$path" "$n"; cat /mnt/out.tar; } | nc -w 60 "$host" "$port" | head -n 1)
case "$r" in *" 200 "*) ;; *) echo "the upload was refused: $r" >&2; exit 1;; esac
"#;

fn volume(source: &str, target: &str, labels: &HashMap<String, String>) -> Mount {
    Mount {
        target: Some(target.into()),
        source: Some(source.into()),
        typ: Some(MountType::VOLUME),
        volume_options: Some(MountVolumeOptions {
            labels: Some(labels.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn secret_ref(
    id: &str,
    name: &str,
    target: &str,
    (uid, gid): (u32, u32),
    mode: u32,
) -> TaskSpecContainerSpecSecrets {
    TaskSpecContainerSpecSecrets {
        file: Some(TaskSpecContainerSpecFile {
            name: Some(target.into()),
            uid: Some(uid.to_string()),
            gid: Some(gid.to_string()),
            mode: Some(mode),
        }),
        secret_id: Some(id.into()),
        secret_name: Some(name.into()),
    }
}

/// The image of a container stage.
pub(crate) fn action_image(job: &StageJob) -> String {
    match &job.work {
        Work::Container(a) => a.image.clone(),
        _ => String::new(),
    }
}

/// A helper task of a stage.
pub(crate) struct Helper<'a> {
    pub name: String,
    pub labels: &'a HashMap<String, String>,
    pub image: &'a str,
    pub script: &'a str,
    /// The workspace and private volumes.
    pub volumes: (&'a str, &'a str),
    /// The slot's secret: id and name.
    pub transfer: (&'a str, &'a str),
    pub constraints: Vec<String>,
}

impl Helper<'_> {
    pub(crate) fn job(self) -> Job {
        Job {
            name: self.name,
            labels: self.labels.clone(),
            container: TaskSpecContainerSpec {
                image: Some(self.image.to_string()),
                command: Some(vec!["sh".into(), "-c".into(), self.script.into()]),
                user: Some("0:0".into()),
                mounts: Some(vec![
                    volume(self.volumes.0, "/mnt/w", self.labels),
                    volume(self.volumes.1, "/mnt/p", self.labels),
                ]),
                secrets: Some(vec![secret_ref(
                    self.transfer.0,
                    self.transfer.1,
                    TRANSFER_MOUNT,
                    (0, 0),
                    0o400,
                )]),
                capability_drop: Some(vec!["ALL".into()]),
                capability_add: Some(vec![
                    "CAP_CHOWN".into(),
                    "CAP_DAC_OVERRIDE".into(),
                    "CAP_FOWNER".into(),
                ]),
                labels: Some(self.labels.clone()),
                ..Default::default()
            },
            resources: None,
            constraints: self.constraints,
            networks: Vec::new(),
            global: false,
        }
    }
}

/// The stage's own task, on `node`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_job(
    job: &StageJob,
    name: String,
    labels: &HashMap<String, String>,
    volumes: (&str, &str),
    (entrypoint, cmd): (Vec<String>, Vec<String>),
    env_secret: Option<TaskSpecContainerSpecSecrets>,
    networks: Vec<NetworkAttachmentConfig>,
    node: &str,
) -> Job {
    let mut env = crate::container::plain_env(job);
    env.push("SENTINEL_NODE={{.Node.Hostname}}".into());
    env.push("SENTINEL_NODE_ID={{.Node.ID}}".into());
    let image = action_image(job);
    let mounts = vec![
        volume(volumes.0, WORKSPACE_MOUNT, labels),
        volume(volumes.1, PRIVATE_MOUNT, labels),
        Mount {
            target: Some("/tmp".into()),
            typ: Some(MountType::TMPFS),
            tmpfs_options: Some(MountTmpfsOptions {
                size_bytes: Some(256 << 20),
                mode: Some(0o1777),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    Job {
        name,
        labels: labels.clone(),
        container: TaskSpecContainerSpec {
            image: Some(image),
            command: (!entrypoint.is_empty()).then_some(entrypoint),
            args: (!cmd.is_empty()).then_some(cmd),
            env: Some(env),
            dir: Some(WORKSPACE_MOUNT.into()),
            user: Some(job.user.clone()),
            mounts: Some(mounts),
            secrets: env_secret.map(|s| vec![s]),
            capability_drop: Some(vec!["ALL".into()]),
            labels: Some(labels.clone()),
            // A stopped stage ends at once (its `always` stages wait).
            stop_grace_period: Some(1_000_000_000),
            ..Default::default()
        },
        resources: Some(TaskSpecResources {
            limits: Some(Limit {
                memory_bytes: Some(job.limits.memory as i64),
                nano_cpus: job.limits.cpus.map(|c| (c * 1e9) as i64),
                pids: Some(i64::from(job.limits.pids)),
            }),
            ..Default::default()
        }),
        constraints: vec![format!("node.id == {node}")],
        networks,
        global: false,
    }
}
