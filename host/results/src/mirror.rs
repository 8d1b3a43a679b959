//! Results in two places: every write goes to the primary sink (the local
//! folder the CLI reads) and then to a mirror (S3 behind its outbox); reads
//! come from the primary.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use sentinel_api::{RunDoc, RunId, RunSummary, StageDoc, StageName};
use sentinel_engine::ports::{LogBody, ResultsSink, StorageError};

/// A primary sink and its mirror.
#[derive(Debug, Clone)]
pub struct Mirrored {
    pub primary: Arc<dyn ResultsSink>,
    pub mirror: Arc<dyn ResultsSink>,
}

#[async_trait]
impl ResultsSink for Mirrored {
    async fn put_log(
        &self,
        run: &RunId,
        stage: &StageName,
        attempt: Option<u32>,
        log: &LogBody,
    ) -> Result<String, StorageError> {
        let key = self.primary.put_log(run, stage, attempt, log).await?;
        self.mirror.put_log(run, stage, attempt, log).await?;
        Ok(key)
    }

    async fn put_artifacts(
        &self,
        run: &RunId,
        stage: &StageName,
        dir: &Path,
    ) -> Result<Option<String>, StorageError> {
        let key = self.primary.put_artifacts(run, stage, dir).await?;
        self.mirror.put_artifacts(run, stage, dir).await?;
        Ok(key)
    }

    async fn put_stage(&self, doc: &StageDoc) -> Result<(), StorageError> {
        self.primary.put_stage(doc).await?;
        self.mirror.put_stage(doc).await
    }

    async fn put_run(&self, doc: &RunDoc) -> Result<(), StorageError> {
        self.primary.put_run(doc).await?;
        self.mirror.put_run(doc).await
    }

    async fn update_index(&self, summary: &RunSummary) -> Result<(), StorageError> {
        self.primary.update_index(summary).await?;
        self.mirror.update_index(summary).await
    }

    async fn remove_many_from_index(&self, runs: &[RunId]) -> Result<(), StorageError> {
        self.primary.remove_many_from_index(runs).await?;
        self.mirror.remove_many_from_index(runs).await
    }

    async fn remove_run(&self, run: &RunId) -> Result<u64, StorageError> {
        let n = self.primary.remove_run(run).await?;
        Ok(n + self.mirror.remove_run(run).await?)
    }

    async fn remove_from_index(&self, run: &RunId) -> Result<(), StorageError> {
        self.primary.remove_from_index(run).await?;
        self.mirror.remove_from_index(run).await
    }

    async fn get_run(&self, run: &RunId) -> Result<Option<RunDoc>, StorageError> {
        self.primary.get_run(run).await
    }

    async fn get_stage(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<StageDoc>, StorageError> {
        self.primary.get_stage(run, stage).await
    }

    async fn get_log(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.primary.get_log(run, stage).await
    }

    async fn get_artifacts(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.primary.get_artifacts(run, stage).await
    }

    async fn list_index(&self, limit: usize) -> Result<Vec<RunSummary>, StorageError> {
        self.primary.list_index(limit).await
    }

    fn location(&self) -> String {
        format!("{} and {}", self.primary.location(), self.mirror.location())
    }
}
