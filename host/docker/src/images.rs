//! The images Sentinel made — by build stages and stages' Docker endpoints
//! (`dev.sentinel.run`), and by `commit:` (`dev.sentinel.committed-from`) —
//! and their clean-up: an image no registry holds (no repo digest) can be
//! removed once its run ended; a pushed one is the registry's business.

use std::collections::HashMap;

use bollard::query_parameters::{ListImagesOptions, RemoveImageOptions};
use sentinel_api::RunId;

use crate::commit::LABEL_COMMITTED_FROM;
use crate::{DockerExecutor, LABEL_RUN};

/// An image Sentinel made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeImage {
    pub id: String,
    pub tags: Vec<String>,
    /// The run that made it, when its labels say.
    pub run: Option<RunId>,
    /// When it was made (seconds since the epoch).
    pub created: i64,
    pub size: i64,
    /// A registry holds it (it has a repo digest).
    pub pushed: bool,
}

impl DockerExecutor {
    /// Every image Sentinel made on this engine.
    pub async fn made_images(&self) -> Result<Vec<MadeImage>, String> {
        let mut out: Vec<MadeImage> = Vec::new();
        for label in [LABEL_RUN, LABEL_COMMITTED_FROM] {
            let opts = ListImagesOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![label.to_string()],
                )])),
                ..Default::default()
            };
            let list = self
                .docker
                .list_images(Some(opts))
                .await
                .map_err(|e| format!("cannot list images: {e}"))?;
            for i in list {
                if out.iter().any(|o| o.id == i.id) {
                    continue;
                }
                let run = i
                    .labels
                    .get(LABEL_RUN)
                    .filter(|r| !r.is_empty())
                    .cloned()
                    .or_else(|| {
                        i.labels
                            .get(LABEL_COMMITTED_FROM)
                            .and_then(|f| f.split('/').next().map(str::to_string))
                    })
                    .and_then(|r| r.parse().ok());
                // A committed image blanks the run label: it counts only
                // through its own label.
                if label == LABEL_RUN && run.is_none() {
                    continue;
                }
                out.push(MadeImage {
                    id: i.id,
                    tags: i
                        .repo_tags
                        .into_iter()
                        .filter(|t| t != "<none>:<none>")
                        .collect(),
                    run,
                    created: i.created,
                    size: i.size,
                    pushed: !i.repo_digests.is_empty(),
                });
            }
        }
        out.sort_by_key(|i| i.created);
        Ok(out)
    }

    /// Removes an image Sentinel made (never one a container still uses).
    pub async fn remove_made_image(&self, id: &str) -> Result<(), String> {
        let opts = RemoveImageOptions {
            force: true,
            noprune: false,
            ..Default::default()
        };
        // Forced only past its tags: an image a container uses stays.
        if self.image_in_use(id).await {
            return Err("a container uses it".into());
        }
        self.docker
            .remove_image(id, Some(opts), None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn image_in_use(&self, id: &str) -> bool {
        let opts = bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "ancestor".to_string(),
                vec![id.to_string()],
            )])),
            ..Default::default()
        };
        self.docker
            .list_containers(Some(opts))
            .await
            .map(|l| !l.is_empty())
            .unwrap_or(true)
    }
}
