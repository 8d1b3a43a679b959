//! Deployments in sled: `deployments` (id → document), `deploy_marks` (a
//! marker's key → the deployment that acted on it: each marker is acted
//! on once, forever), `deploy_latest` (`environment/app` → the newest
//! version deployed or deploying there) and `deploy_current`
//! (`environment/app` → the newest deployment that succeeded there) and
//! `deploy_pending` (a deployment waiting for an approval → its run's
//! queue entry, queued when it is approved). A marker's decision — deploy, ignore or refuse — and the
//! queue entry of its run are one transaction, so a crash, a restart or two
//! polls at once never deploy a marker twice.

use chrono::{DateTime, Utc};
use sled::Transactional as _;
use sled::transaction::ConflictableTransactionError;

use sentinel_api::{Approval, DeploymentDoc, DeploymentStatus, RunId};
use sentinel_engine::ports::{QueueEntry, StorageError, Store as _};

use crate::queue::queue_in;
use crate::{SledStore, decode, encode, err, get_decoded, transaction_err};

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
    /// its app there, else queued with `entry` (its run; held for an
    /// approval when `hold`) or, without an entry, as `doc` says (a refused
    /// payload). On disk before it returns.
    pub async fn decide_marker(
        &self,
        mark: &str,
        doc: &DeploymentDoc,
        entry: Option<&QueueEntry>,
        hold: bool,
        newer: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Decided, StorageError> {
        let seq = self.db.generate_id().map_err(|e| err("queue id", e))?;
        let value = entry.map(encode).transpose()?;
        let latest = latest_key(&doc.environment, &doc.app);
        let trees = (
            &self.deploy_marks,
            &self.deployments,
            &self.deploy_latest,
            &self.deploy_pending,
            &self.queue,
            &self.queued,
            &self.requests,
        );
        let outcome = trees.transaction(
            |(marks, deployments, latest_t, pending, queue, queued, requests)| {
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
                        if hold {
                            pending.insert(doc.id.as_bytes(), value.as_slice())?;
                            doc.status = DeploymentStatus::WaitingApproval;
                        } else {
                            if queued.get(entry.run_id.as_str())?.is_some() {
                                return Err(ConflictableTransactionError::Abort(format!(
                                    "run {} is already queued",
                                    entry.run_id
                                )));
                            }
                            queue_in(queue, queued, requests, seq, &entry.run_id, value)?;
                            doc.run = Some(entry.run_id.clone());
                        }
                        latest_t.insert(latest.as_slice(), doc.version.as_bytes())?;
                    }
                    _ => {}
                }
                let bytes =
                    encode(&doc).map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                deployments.insert(doc.id.as_bytes(), bytes)?;
                marks.insert(mark.as_bytes(), doc.id.as_bytes())?;
                Ok(Decided::New(Box::new(doc)))
            },
        );
        let decided = outcome.map_err(|e| transaction_err("deploy decision", e))?;
        self.flush().await?;
        Ok(decided)
    }

    /// Records a deployment asked for by a promotion, with its run's queue
    /// entry — queued, or held until an approval when `hold` — in one
    /// transaction, on disk before it returns.
    pub async fn request_deployment(
        &self,
        doc: &DeploymentDoc,
        entry: &QueueEntry,
        hold: bool,
    ) -> Result<DeploymentDoc, StorageError> {
        let seq = self.db.generate_id().map_err(|e| err("queue id", e))?;
        let value = encode(entry)?;
        let mut doc = doc.clone();
        if hold {
            doc.status = DeploymentStatus::WaitingApproval;
            doc.run = None;
        } else {
            doc.status = DeploymentStatus::Queued;
            doc.run = Some(entry.run_id.clone());
        }
        let bytes = encode(&doc)?;
        let trees = (
            &self.deployments,
            &self.deploy_pending,
            &self.queue,
            &self.queued,
            &self.requests,
        );
        trees
            .transaction(|(deployments, pending, queue, queued, requests)| {
                if hold {
                    pending.insert(doc.id.as_bytes(), value.as_slice())?;
                } else {
                    queue_in(queue, queued, requests, seq, &entry.run_id, &value)?;
                }
                deployments.insert(doc.id.as_bytes(), bytes.as_slice())?;
                Ok::<(), ConflictableTransactionError>(())
            })
            .map_err(|e| err("deploy request", e))?;
        self.flush().await?;
        Ok(doc)
    }

    /// Answers a deployment that waits for an approval: approved, its run
    /// is queued; refused, it is `rejected` and nothing runs. A pipeline's
    /// gate sends its paused run on either way (refused, the run ends so;
    /// `cancel`: the run was cancelled, and ends `cancelled`). One
    /// transaction, on disk before it returns. `Ok(Err(status))` when it
    /// does not wait (any more), with its status (`Unknown`: there is no
    /// such deployment).
    pub async fn answer_approval(
        &self,
        id: &str,
        approval: Approval,
        cancel: bool,
    ) -> Result<Result<DeploymentDoc, DeploymentStatus>, StorageError> {
        // A gate whose run ended meanwhile (failed or cancelled elsewhere)
        // waits no more: it takes its run's outcome.
        if let Some(mut d) = self.deployment(id)?
            && d.status == DeploymentStatus::WaitingApproval
            && d.gate_run().is_some()
        {
            self.settle(&mut d).await?;
            if d.status.is_final() {
                self.deploy_pending
                    .remove(id.as_bytes())
                    .map_err(|e| err("deploy pending", e))?;
                return Ok(Err(d.status));
            }
        }
        let seq = self.db.generate_id().map_err(|e| err("queue id", e))?;
        let trees = (
            &self.deployments,
            &self.deploy_pending,
            &self.queue,
            &self.queued,
            &self.requests,
        );
        let outcome = trees.transaction(|(deployments, pending, queue, queued, requests)| {
            let abort = |m: String| ConflictableTransactionError::Abort(m);
            let Some(bytes) = deployments.get(id.as_bytes())? else {
                return Ok(Err(DeploymentStatus::Unknown));
            };
            let mut doc: DeploymentDoc = decode(&bytes).map_err(|e| abort(e.to_string()))?;
            let Some(value) = pending.get(id.as_bytes())? else {
                return Ok(Err(doc.status));
            };
            pending.remove(id.as_bytes())?;
            if let Some(run) = doc.gate_run().cloned() {
                // Approved or not, the paused run goes on (once).
                if queued.get(run.as_str())?.is_none() {
                    queue_in(queue, queued, requests, seq, &run, &value)?;
                }
                doc.status = match (approval.approved, cancel) {
                    (_, true) => DeploymentStatus::Cancelled,
                    (true, false) => DeploymentStatus::Queued,
                    (false, false) => DeploymentStatus::Rejected,
                };
                if doc.status.is_final() {
                    doc.reason = approval.reason.clone();
                    doc.finished = Some(approval.at);
                }
            } else if approval.approved {
                let entry: QueueEntry = decode(&value).map_err(|e| abort(e.to_string()))?;
                queue_in(queue, queued, requests, seq, &entry.run_id, &value)?;
                doc.status = DeploymentStatus::Queued;
                doc.run = Some(entry.run_id);
            } else {
                doc.status = DeploymentStatus::Rejected;
                doc.reason = approval.reason.clone();
                doc.finished = Some(approval.at);
            }
            doc.approval = Some(approval.clone());
            let bytes = encode(&doc).map_err(|e| abort(e.to_string()))?;
            deployments.insert(id.as_bytes(), bytes)?;
            Ok(Ok(doc))
        });
        let answer = outcome.map_err(|e| transaction_err("approval", e))?;
        self.flush().await?;
        Ok(answer)
    }

    /// The deployments waiting for an approval, oldest first.
    pub fn waiting_approval(&self) -> Result<Vec<DeploymentDoc>, StorageError> {
        let mut out = Vec::new();
        for kv in self.deploy_pending.iter() {
            let (k, _) = kv.map_err(|e| err("deploy pending", e))?;
            if let Some(d) = self.deployment(&String::from_utf8_lossy(&k))? {
                out.push(d);
            }
        }
        Ok(out)
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
        // A late word of a run's start never undoes its end.
        if doc.run.as_ref() == Some(run) && doc.status.is_final() && !status.is_final() {
            return Ok(());
        }
        doc.run = Some(run.clone());
        doc.status = status;
        doc.reason = reason;
        doc.finished = finished;
        self.put_deployment(&doc)
    }

    /// Stores a deployment; one that succeeded becomes its environment's
    /// current version of its app unless a newer one is.
    fn put_deployment(&self, doc: &DeploymentDoc) -> Result<(), StorageError> {
        self.deployments
            .insert(doc.id.as_bytes(), encode(doc)?)
            .map_err(|e| err("deployment", e))?;
        if doc.status == DeploymentStatus::Succeeded {
            let id = doc.id.as_bytes();
            self.deploy_current
                .fetch_and_update(latest_key(&doc.environment, &doc.app), |old| match old {
                    Some(o) if o >= id => Some(o.to_vec()),
                    _ => Some(id.to_vec()),
                })
                .map_err(|e| err("deploy current", e))?;
        }
        Ok(())
    }

    /// Up to `limit` deployments, newest first, of `app` and `environment`
    /// when given, each settled (see [`SledStore::deployment_now`]).
    pub async fn deployments(
        &self,
        app: Option<&str>,
        environment: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeploymentDoc>, StorageError> {
        let mut out = Vec::new();
        for kv in self.deployments.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = kv.map_err(|e| err("deployments", e))?;
            let mut d: DeploymentDoc = decode(&v)?;
            if app.is_some_and(|a| a != d.app) || environment.is_some_and(|e| e != d.environment) {
                continue;
            }
            self.settle(&mut d).await?;
            out.push(d);
        }
        Ok(out)
    }

    /// Deployment `id`, with its run's outcome when that is not recorded yet.
    pub async fn deployment_now(&self, id: &str) -> Result<Option<DeploymentDoc>, StorageError> {
        let Some(mut d) = self.deployment(id)? else {
            return Ok(None);
        };
        self.settle(&mut d).await?;
        Ok(Some(d))
    }

    /// A deployment whose run ended without it being told (the word of
    /// the run's end is on its way, or a server stopped at that moment)
    /// takes its run's outcome, and keeps it — unless the run's server died
    /// and it was queued again: then that run is the deployment's.
    pub(crate) async fn settle(&self, d: &mut DeploymentDoc) -> Result<(), StorageError> {
        if d.status.is_final() {
            return Ok(());
        }
        let Some(run) = &d.run else { return Ok(()) };
        let Some(r) = self.get_run(run).await? else {
            return Ok(());
        };
        if !r.status.is_final() {
            return Ok(());
        }
        // The queue entry of the run that just ended may still be there.
        match self.retry_of(&d.id)?.filter(|(r, _)| r != run) {
            Some((retry, claimed)) => {
                d.run = Some(retry);
                d.status = if claimed {
                    DeploymentStatus::Running
                } else {
                    DeploymentStatus::Queued
                };
            }
            None => {
                d.status = DeploymentStatus::of_run(r.status);
                d.reason = r.reason.clone();
                d.finished = r.finished;
            }
        }
        self.put_deployment(d)
    }

    /// The run of deployment `id` waiting in the queue (or claimed there),
    /// if one is: a later attempt of a run whose server died.
    fn retry_of(&self, id: &str) -> Result<Option<(RunId, bool)>, StorageError> {
        for kv in self.queue.iter() {
            let (_, v) = kv.map_err(|e| err("queue", e))?;
            let e: QueueEntry = decode(&v)?;
            if e.request["deploy"]["deployment"].as_str() == Some(id) {
                return Ok(Some((e.run_id, e.claim.is_some())));
            }
        }
        Ok(None)
    }

    /// What is deployed where now: per environment and app, the newest
    /// deployment that succeeded (of `app` and `environment` when given).
    pub fn current(
        &self,
        app: Option<&str>,
        environment: Option<&str>,
    ) -> Result<Vec<DeploymentDoc>, StorageError> {
        let mut out = Vec::new();
        for kv in self.deploy_current.iter() {
            let (_, id) = kv.map_err(|e| err("deploy current", e))?;
            if let Some(d) = self.deployment(&String::from_utf8_lossy(&id))?
                && app.is_none_or(|a| a == d.app)
                && environment.is_none_or(|e| e == d.environment)
            {
                out.push(d);
            }
        }
        Ok(out)
    }
}
