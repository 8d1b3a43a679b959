//! Deployments in sled: `deployments` (id → document), `deploy_marks` (a
//! marker's key → the deployment that acted on it: each marker is acted
//! on once, forever) and `deploy_latest` (`environment/app` → the newest
//! version deployed or deploying there). A marker's decision — deploy, ignore or refuse — and the
//! queue entry of its run are one transaction, so a crash, a restart or two
//! polls at once never deploy a marker twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sled::Transactional as _;
use sled::transaction::ConflictableTransactionError;

use sentinel_api::{DeploymentDoc, DeploymentStatus, RunId};
use sentinel_engine::ports::{QueueEntry, StorageError, Store as _};

use crate::queue::queue_in;
use crate::{SledStore, decode, encode, err, get_decoded};

/// What a decision came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// Recorded now (queued with its run, ignored or failed).
    New(Box<DeploymentDoc>),
    /// The marker was acted on before: the deployment's id.
    Known(String),
}

fn latest_key(environment: &str, app: &str) -> Vec<u8> {
    format!("{environment}/{app}").into_bytes()
}

impl SledStore {
    /// The deployment that acted on marker `mark`, if one did.
    pub fn marked(&self, mark: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .deploy_marks
            .get(mark.as_bytes())
            .map_err(|e| err("deploy marks", e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The newest version deployed (or deploying) to `environment` of `app`.
    pub fn latest_version(
        &self,
        environment: &str,
        app: &str,
    ) -> Result<Option<String>, StorageError> {
        Ok(self
            .deploy_latest
            .get(latest_key(environment, app))
            .map_err(|e| err("deploy latest", e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Acts on marker `mark` once: unless it was acted on before, records
    /// `doc` — ignored when its version is not `newer` than the latest of
    /// its app there, else queued with `entry` (its run) or, without an
    /// entry, as `doc` says (a refused payload). On disk before it returns.
    pub async fn decide_marker(
        &self,
        mark: &str,
        doc: &DeploymentDoc,
        entry: Option<&QueueEntry>,
        newer: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Decided, StorageError> {
        let seq = self.db.generate_id().map_err(|e| err("queue id", e))?;
        let value = entry.map(encode).transpose()?;
        let latest = latest_key(&doc.environment, &doc.app);
        let trees = (
            &self.deploy_marks,
            &self.deployments,
            &self.deploy_latest,
            &self.queue,
            &self.queued,
            &self.requests,
        );
        let outcome =
            trees.transaction(|(marks, deployments, latest_t, queue, queued, requests)| {
                if let Some(id) = marks.get(mark.as_bytes())? {
                    return Ok(Decided::Known(String::from_utf8_lossy(&id).into_owned()));
                }
                let mut doc = doc.clone();
                let before = latest_t
                    .get(&latest)?
                    .map(|v| String::from_utf8_lossy(&v).into_owned());
                match (&before, entry, &value) {
                    (Some(v), _, _) if !newer(v) => {
                        doc.status = DeploymentStatus::Ignored;
                        doc.reason = Some(format!(
                            "{} is not newer than {v}, the newest version deployed to {}",
                            doc.version, doc.environment
                        ));
                        doc.run = None;
                        doc.finished = Some(doc.requested);
                    }
                    (_, Some(entry), Some(value)) => {
                        if queued.get(entry.run_id.as_str())?.is_some() {
                            return Err(ConflictableTransactionError::Abort(format!(
                                "run {} is already queued",
                                entry.run_id
                            )));
                        }
                        queue_in(queue, queued, requests, seq, &entry.run_id, value)?;
                        latest_t.insert(latest.as_slice(), doc.version.as_bytes())?;
                        doc.run = Some(entry.run_id.clone());
                    }
                    _ => {}
                }
                let bytes =
                    encode(&doc).map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                deployments.insert(doc.id.as_bytes(), bytes)?;
                marks.insert(mark.as_bytes(), doc.id.as_bytes())?;
                Ok(Decided::New(Box::new(doc)))
            });
        let decided = outcome.map_err(|e| match e {
            sled::transaction::TransactionError::Abort(m) => err("deploy decision", m),
            sled::transaction::TransactionError::Storage(e) => err("deploy decision", e),
        })?;
        self.flush().await?;
        Ok(decided)
    }

    /// One deployment.
    pub fn deployment(&self, id: &str) -> Result<Option<DeploymentDoc>, StorageError> {
        get_decoded(&self.deployments, id.as_bytes(), "deployment")
    }

    /// Records what became of deployment `id` through its run `run` (the
    /// latest attempt: a run started again after its server died is a new
    /// run of the same deployment).
    pub fn deployment_follows(
        &self,
        id: &str,
        run: &RunId,
        status: DeploymentStatus,
        reason: Option<String>,
        finished: Option<DateTime<Utc>>,
    ) -> Result<(), StorageError> {
        let Some(mut doc) = self.deployment(id)? else {
            return Ok(());
        };
        doc.run = Some(run.clone());
        doc.status = status;
        doc.reason = reason;
        doc.finished = finished;
        self.deployments
            .insert(id.as_bytes(), encode(&doc)?)
            .map_err(|e| err("deployment", e))?;
        Ok(())
    }

    /// Every deployment, newest first, of `app` and `environment` when
    /// given; one whose run went on without it being told (a server that
    /// stopped) takes its run's status.
    pub async fn deployments(
        &self,
        app: Option<&str>,
        environment: Option<&str>,
    ) -> Result<Vec<DeploymentDoc>, StorageError> {
        let mut out = Vec::new();
        for kv in self.deployments.iter().rev() {
            let (_, v) = kv.map_err(|e| err("deployments", e))?;
            let mut d: DeploymentDoc = decode(&v)?;
            if app.is_some_and(|a| a != d.app) || environment.is_some_and(|e| e != d.environment) {
                continue;
            }
            if !d.status.is_final()
                && let Some(run) = &d.run
                && let Some(r) = self.get_run(run).await?
            {
                d.status = DeploymentStatus::of_run(r.status);
                if d.status.is_final() {
                    d.reason = r.reason.clone();
                    d.finished = r.finished;
                }
            }
            out.push(d);
        }
        Ok(out)
    }
}

/// What is deployed where now: per environment and app, the newest
/// deployment that succeeded.
pub fn current(all: &[DeploymentDoc]) -> BTreeMap<(String, String), &DeploymentDoc> {
    let mut now: BTreeMap<(String, String), &DeploymentDoc> = BTreeMap::new();
    for d in all
        .iter()
        .filter(|d| d.status == DeploymentStatus::Succeeded)
    {
        now.entry((d.environment.clone(), d.app.clone()))
            .and_modify(|cur| {
                if d.id > cur.id {
                    *cur = d;
                }
            })
            .or_insert(d);
    }
    now
}
