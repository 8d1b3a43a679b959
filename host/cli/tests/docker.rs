//! Container stages against the real Docker engine. The cases run
//! concurrently inside one test so that, once all are done, the suite can
//! check that no container or network with the project's labels remains.

mod cases;
mod common;

use cases::*;
use common::Case;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_suite() {
    common::docker().await;
    let cases: Vec<(&str, Case)> = cases![
        exit_codes_and_skips,
        outputs_env_and_workspace,
        secrets_masked_in_env_and_log,
        long_line_straddling_docker_split,
        artifacts_zipped,
        oom_is_named,
        job_steps_share_one_container,
        a_timed_out_job_still_runs_its_after_steps,
        timeout_is_named,
        cancel_still_runs_always,
        service_reached_by_name,
        service_never_ready_fails_the_run,
        sensitive_value_in_no_file,
        missing_image_says_so,
        log_limit_keeps_head_and_tail,
        hardened_container,
        a_committed_job_image_holds_none_of_the_runs_values,
        idle_and_step_timeouts_are_named,
        the_cache_carries_files_between_runs,
        a_stage_is_made_ready_while_its_dependencies_run,
        reused_stages_share_one_warm_container,
        network_none_stages_join_namespaces_made_ready,
        retries_keep_each_attempt,
        placement_is_checked_against_this_machine,
    ];
    common::run_suite("Docker", cases).await;
}
