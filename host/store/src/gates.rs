//! A run paused at its approval gates, in sled: each gate's deployment
//! (`deployments`) holds the run's resume entry (`deploy_pending`) until it
//! is answered; the run leaves the queue in the same transaction. A gate
//! answered meanwhile sends the run on at once.

use sled::Transactional as _;
use sled::transaction::ConflictableTransactionError;

use sentinel_api::{DeploymentDoc, DeploymentStatus, RunId};
use sentinel_engine::ports::{QueueEntry, StorageError};

use crate::queue::queue_in;
use crate::{SledStore, decode, encode, err, transaction_err};

impl SledStore {
    /// Holds run `run`, paused at the gates `gates` (each a deployment
    /// waiting for an approval): in one transaction, on disk before it
    /// returns, the run leaves the queue and each gate's deployment is
    /// recorded (unless it is already) with `resume`, the entry that sends
    /// the run on once the gate is answered. A gate answered already sends
    /// it on now: returns true when `resume` was queued.
    pub async fn hold_run(
        &self,
        run: &RunId,
        gates: &[DeploymentDoc],
        resume: &QueueEntry,
    ) -> Result<bool, StorageError> {
        let seq = self.db.generate_id().map_err(|e| err("queue id", e))?;
        let value = encode(resume)?;
        let docs = gates
            .iter()
            .map(|d| Ok((d.id.clone(), encode(d)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        let trees = (
            &self.deployments,
            &self.deploy_pending,
            &self.queue,
            &self.queued,
            &self.requests,
        );
        let outcome = trees.transaction(|(deployments, pending, queue, queued, requests)| {
            let abort = |m: String| ConflictableTransactionError::Abort(m);
            if let Some(seq) = queued.get(run.as_str())? {
                queue.remove(seq)?;
                queued.remove(run.as_str())?;
            }
            let mut go_on = false;
            for (id, bytes) in &docs {
                match deployments.get(id.as_bytes())? {
                    None => {
                        deployments.insert(id.as_bytes(), bytes.as_slice())?;
                        pending.insert(id.as_bytes(), value.as_slice())?;
                    }
                    Some(old) => {
                        let old: DeploymentDoc = decode(&old).map_err(|e| abort(e.to_string()))?;
                        if old.status == DeploymentStatus::WaitingApproval {
                            pending.insert(id.as_bytes(), value.as_slice())?;
                        } else {
                            go_on = true;
                        }
                    }
                }
            }
            if go_on {
                queue_in(queue, queued, requests, seq, run, &value)?;
            }
            Ok(go_on)
        });
        let queued = outcome.map_err(|e| transaction_err("hold", e))?;
        self.flush().await?;
        Ok(queued)
    }
}
