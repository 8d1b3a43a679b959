//! Approval gates on the engine's ports: a run pauses at a gate holding
//! nothing (no lease, no resources), recovery leaves it alone, and it goes
//! on as the same run — its ended stages as they were, their files and
//! outputs back — when approved; refused, cancelled, failed meanwhile or
//! with nobody to answer, it ends the way each of those says.

use std::collections::BTreeMap;
use std::sync::Arc;

use sentinel_api::{Approval, FailureKind, GateDoc, RunDoc, RunStatus, StageName, StageStatus};
use sentinel_engine::fake::{FakeExecutor, MemSink, MemStore};
use sentinel_engine::gate::{Gate, Resume};
use sentinel_engine::ports::Store;
use sentinel_engine::workspace::FileSet;
use sentinel_engine::{Engine, EngineConfig, Reused, RunRequest, Signals};

const PIPELINE: &str = r#"
version: 1
box: fake
stages:
  build:
    run: |
      echo v1
      write dist/app built-v1
  side: {run: sleep 20}
  deploy:
    run: cat dist/app
    after: build
    approval: production
    env: {BUILT: "${stages.build.output}"}
  smoke: {run: echo smoke, after: deploy}
  cleanup: {run: echo cleanup, when: always}
"#;

struct Rig {
    engine: Engine,
    store: Arc<MemStore>,
    exec: Arc<FakeExecutor>,
    state: tempfile::TempDir,
    src: tempfile::TempDir,
}

fn rig() -> Rig {
    let store = Arc::new(MemStore::default());
    let exec = Arc::new(FakeExecutor::default());
    let state = tempfile::tempdir().unwrap();
    let engine = Engine {
        exec: exec.clone(),
        store: store.clone(),
        sink: Arc::new(MemSink::default()),
        config: EngineConfig {
            jobs: 4,
            state_dir: state.path().to_path_buf(),
            keep_workspace: false,
            keep_files: EngineConfig::KEEP_FILES,
        },
    };
    Rig {
        engine,
        store,
        exec,
        state,
        src: tempfile::tempdir().unwrap(),
    }
}

fn name(s: &str) -> StageName {
    s.parse().unwrap()
}

impl Rig {
    fn request(&self, src: &str, gates: BTreeMap<StageName, Gate>) -> RunRequest {
        let plan = sentinel_pipeline::parse_str(src, "sentinel.yml", "app").unwrap();
        RunRequest {
            gates,
            ..RunRequest::local(plan, self.src.path().to_path_buf())
        }
    }

    async fn run(&self, req: RunRequest) -> RunDoc {
        self.engine
            .run(req, Arc::new(|_| {}), Signals::default())
            .await
            .unwrap()
    }

    /// A run of [`PIPELINE`] paused at its `deploy` gate.
    async fn paused(&self) -> RunDoc {
        let wait = Gate::Wait {
            environment: "production".into(),
            deployment: None,
        };
        let run = self
            .run(self.request(PIPELINE, BTreeMap::from([(name("deploy"), wait)])))
            .await;
        assert_eq!(run.status, RunStatus::WaitingApproval, "{run:?}");
        run
    }

    async fn stage(&self, run: &RunDoc, stage: &str) -> sentinel_api::StageDoc {
        let stages = self.store.get_stages(&run.id).await.unwrap();
        stages
            .into_iter()
            .find(|s| s.name.as_str() == stage)
            .unwrap()
    }

    /// Paused run `run` going on with `gate` at `deploy`, as a server
    /// resolves it: the succeeded stages' kept outputs and files reused.
    async fn go_on(&self, run: &RunDoc, gate: Gate) -> RunDoc {
        let stages = self.store.get_stages(&run.id).await.unwrap();
        let mut reuse = BTreeMap::new();
        for d in stages.iter().filter(|d| d.status == StageStatus::Succeeded) {
            let kept = self.store.kept_outputs(&run.id, &d.name).await.unwrap();
            let kept = kept.expect("a succeeded stage's outputs are kept");
            let dir = self.engine.kept_dir(&run.id).join(d.name.as_str());
            reuse.insert(
                d.name.clone(),
                Reused {
                    run: run.id.clone(),
                    output: kept.output,
                    outputs: kept.outputs,
                    files: dir.is_dir().then_some(FileSet {
                        dir,
                        files: 0,
                        bytes: 0,
                    }),
                },
            );
        }
        let resume = Resume {
            run: self.store.get_run(&run.id).await.unwrap().unwrap(),
            stages,
        };
        let req = RunRequest {
            run_id: Some(run.id.clone()),
            reuse,
            resume: Some(resume),
            ..self.request(PIPELINE, BTreeMap::from([(name("deploy"), gate)]))
        };
        self.run(req).await
    }
}

fn answer(approved: bool, by: &str, reason: Option<&str>) -> Approval {
    Approval {
        approved,
        by: by.into(),
        at: chrono::Utc::now(),
        reason: reason.map(str::to_string),
    }
}

fn status_of(run: &RunDoc, stage: &str) -> StageStatus {
    run.stages
        .iter()
        .find(|s| s.name.as_str() == stage)
        .unwrap()
        .status
}

#[tokio::test]
async fn a_paused_run_holds_nothing_survives_recovery_and_goes_on_as_the_same_run() {
    let r = rig();
    let run = r.paused().await;
    assert_eq!(status_of(&run, "build"), StageStatus::Succeeded);
    assert_eq!(status_of(&run, "side"), StageStatus::Succeeded);
    assert_eq!(status_of(&run, "deploy"), StageStatus::WaitingApproval);
    assert_eq!(status_of(&run, "smoke"), StageStatus::Pending);
    assert_eq!(status_of(&run, "cleanup"), StageStatus::Pending);
    let reason = run.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("stage `deploy` for `production`"),
        "{reason}"
    );
    assert!(run.finished.is_none(), "a paused run has not ended");
    // Nothing held: no lease, its resources removed, its workspace gone.
    assert!(r.store.leases().await.unwrap().is_empty());
    assert!(r.exec.ended.lock().unwrap().contains(&run.id));
    assert!(!r.state.path().join("runs").join(run.id.as_str()).exists());
    let gate = r
        .stage(&run, "deploy")
        .await
        .approval
        .expect("the gate's record");
    assert_eq!(gate.environment, "production");
    assert!(!gate.deployment.is_empty());
    assert!(gate.answer.is_none());
    let built = r.stage(&run, "build").await;

    // A restart's recovery leaves the paused run as it is.
    let recovery = r.engine.recover().await;
    assert!(recovery.recovered.is_empty(), "{recovery:?}");
    let stored = r.store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::WaitingApproval);

    // Approved: the same run goes on from its gate.
    let doc = GateDoc {
        answer: None,
        ..gate.clone()
    };
    let approved = Gate::answered(&doc, &answer(true, "alice", None), false);
    let done = r.go_on(&run, approved).await;
    assert_eq!(done.id, run.id);
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    assert_eq!(done.created, run.created);
    assert_eq!(done.started, run.started, "it keeps its first start");
    // `build` ran once; `deploy` found its files and its output.
    let started = r.exec.started.lock().unwrap().clone();
    assert_eq!(
        started.iter().filter(|s| *s == "build").count(),
        1,
        "{started:?}"
    );
    assert_eq!(started.iter().filter(|s| *s == "deploy").count(), 1);
    let deploy = r.stage(&done, "deploy").await;
    assert_eq!(deploy.status, StageStatus::Succeeded, "{deploy:?}");
    assert_eq!(
        deploy.inputs.env.get("BUILT").map(String::as_str),
        Some("v1")
    );
    let gate = deploy.approval.expect("the gate's answer");
    assert_eq!(gate.answer.map(|a| a.by), Some("alice".to_string()));
    // `build`'s document is the one it had: not run, not reused again.
    assert_eq!(r.stage(&done, "build").await, built);
    for s in ["smoke", "cleanup"] {
        assert_eq!(status_of(&done, s), StageStatus::Succeeded, "{s}");
    }
    // Its history: paused, then going again, then its end.
    let events: Vec<String> = r
        .store
        .get_events(&run.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.stage.is_none())
        .map(|e| e.status)
        .collect();
    assert_eq!(
        events,
        ["running", "waiting_approval", "running", "succeeded"],
        "{events:?}"
    );
}

#[tokio::test]
async fn a_refused_gate_fails_its_stage_and_the_always_stages_still_run() {
    let r = rig();
    let run = r.paused().await;
    let gate = r.stage(&run, "deploy").await.approval.unwrap();
    let refused = Gate::answered(&gate, &answer(false, "bob", Some("not today")), false);
    let done = r.go_on(&run, refused).await;
    assert_eq!(done.status, RunStatus::Failed);
    let deploy = r.stage(&done, "deploy").await;
    assert_eq!(deploy.status, StageStatus::Failed);
    assert_eq!(deploy.failure, Some(FailureKind::Rejected));
    let why = deploy.reason.unwrap_or_default();
    assert!(why.contains("refused by bob: not today"), "{why}");
    assert_eq!(status_of(&done, "smoke"), StageStatus::Skipped);
    assert_eq!(status_of(&done, "cleanup"), StageStatus::Succeeded);
    let started = r.exec.started.lock().unwrap().clone();
    assert!(!started.contains(&"deploy".to_string()), "{started:?}");
}

#[tokio::test]
async fn a_run_cancelled_while_it_waits_ends_cancelled_after_its_always_stages() {
    let r = rig();
    let run = r.paused().await;
    let gate = r.stage(&run, "deploy").await.approval.unwrap();
    let cancelled = Gate::answered(
        &gate,
        &answer(false, "carol", Some("the run was cancelled")),
        true,
    );
    let done = r.go_on(&run, cancelled).await;
    assert_eq!(done.status, RunStatus::Cancelled);
    assert_eq!(status_of(&done, "deploy"), StageStatus::Cancelled);
    assert_eq!(status_of(&done, "smoke"), StageStatus::Cancelled);
    assert_eq!(status_of(&done, "cleanup"), StageStatus::Succeeded);
    let gate = r.stage(&done, "deploy").await.approval.unwrap();
    assert_eq!(gate.answer.map(|a| a.by), Some("carol".to_string()));
}

#[tokio::test]
async fn a_run_that_fails_while_a_gate_waits_ends_without_asking() {
    let r = rig();
    let src = PIPELINE.replace(
        "side: {run: sleep 20}",
        "side: {run: \"sleep 20\\nexit 3\"}",
    );
    let wait = Gate::Wait {
        environment: "production".into(),
        deployment: None,
    };
    let run = r
        .run(r.request(&src, BTreeMap::from([(name("deploy"), wait)])))
        .await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let deploy = r.stage(&run, "deploy").await;
    assert_eq!(deploy.status, StageStatus::Skipped);
    assert_eq!(
        deploy.reason.as_deref(),
        Some("the run failed before an approval came")
    );
    assert_eq!(status_of(&run, "cleanup"), StageStatus::Succeeded);
}

#[tokio::test]
async fn a_gate_nobody_can_answer_fails_saying_how_to_approve_it() {
    let r = rig();
    let run = r.run(r.request(PIPELINE, BTreeMap::new())).await;
    assert_eq!(run.status, RunStatus::Failed);
    let deploy = r.stage(&run, "deploy").await;
    assert_eq!(deploy.failure, Some(FailureKind::Rejected));
    let why = deploy.reason.unwrap_or_default();
    assert!(why.contains("--approve production"), "{why}");
}
