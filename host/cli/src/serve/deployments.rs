//! Publishes the deployments record as `deployments/index.json` in the
//! results (the local folder and, when configured, the bucket), so the
//! static results site shows what is deployed where. The document is a
//! snapshot made from the store, so a write that fails loses nothing: it is
//! made again at the next change, or within a minute.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sentinel_api::{DeploymentsDoc, SCHEMA_VERSION, keys};
use sentinel_results::LocalSink;
use sentinel_s3::S3Sink;
use sentinel_server::deploys::Changes;
use sentinel_store::SledStore;
use tokio_util::sync::CancellationToken;

/// The document as the store has it now.
async fn snapshot(store: &SledStore) -> anyhow::Result<DeploymentsDoc> {
    Ok(DeploymentsDoc {
        schema: SCHEMA_VERSION,
        updated: Utc::now(),
        current: store.current(None, None)?,
        recent: store
            .deployments(None, None, DeploymentsDoc::RECENT)
            .await?,
    })
}

/// Writes the document once; false when a write failed (made again later).
async fn publish_once(store: &SledStore, local: &LocalSink, bucket: Option<&S3Sink>) -> bool {
    let doc = match snapshot(store).await {
        Ok(doc) => doc,
        Err(e) => {
            tracing::warn!("cannot read the deployments: {e}");
            return false;
        }
    };
    let mut ok = true;
    if let Err(e) = local.put_json(keys::DEPLOYMENTS.to_string(), &doc).await {
        tracing::warn!("cannot write {}: {e}", keys::DEPLOYMENTS);
        ok = false;
    }
    if let Some(b) = bucket
        && let Err(e) = b.put_json(keys::DEPLOYMENTS, &doc).await
    {
        tracing::warn!("cannot publish {} to the bucket: {e}", keys::DEPLOYMENTS);
        ok = false;
    }
    ok
}

/// Writes the document once at start and on every `changed` (again within
/// a minute when a write failed); once more when `stop` comes.
pub async fn publish(
    store: SledStore,
    local: LocalSink,
    bucket: Option<S3Sink>,
    changed: Arc<Changes>,
    stop: CancellationToken,
) {
    let mut owed = true;
    loop {
        if owed {
            owed = !publish_once(&store, &local, bucket.as_ref()).await;
        }
        let wait = Duration::from_secs(if owed { 60 } else { 3600 });
        tokio::select! {
            _ = stop.cancelled() => {
                publish_once(&store, &local, bucket.as_ref()).await;
                return;
            }
            _ = changed.notify.notified() => owed = true,
            _ = tokio::time::sleep(wait) => owed = true,
        }
    }
}
