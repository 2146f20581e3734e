"""Every part of the RunPod SDK the worker relies on beyond `runpod.serverless.start`, with why.

serving/jobloop.py replaces the SDK's JobScaler loops (its docstring gives the reasons) and keeps the rest of
the SDK's job loop; these are the names and shapes that replacement stands on. An SDK upgrade is tried by
installing it and running `python -m tpworker.contract`."""

from __future__ import annotations

from tpworker.contract.seam import Seam

JOBLOOP = "serving/jobloop.py"
SCALER = "runpod.serverless.modules.rp_scale:JobScaler"

RUNPOD_SEAMS: tuple[Seam, ...] = (
    *(
        Seam(
            f"{SCALER}.{method}",
            JOBLOOP,
            "overridden or called by EventDrivenJobScaler with this signature",
            parameters=parameters,
            exact=True,
        )
        for method, parameters in (
            ("__init__", ("self", "config")),
            ("get_jobs", ("self", "session")),
            ("run_jobs", ("self", "session")),
            ("handle_job", ("self", "session", "job")),
            ("run", ("self",)),
            ("kill_worker", ("self",)),
            ("set_scale", ("self",)),
            ("is_alive", ("self",)),
        )
    ),
    Seam(
        SCALER,
        JOBLOOP,
        "the state the replacement loops read and fill: the queue, the job set, the tasks, the take, the "
        "concurrency, the stop event",
        fields=(
            "jobs_queue",
            "job_progress",
            "jobs_tasks",
            "jobs_fetcher",
            "jobs_fetcher_timeout",
            "current_concurrency",
            "config",
            "_shutdown_event",
        ),
    ),
    Seam(
        "runpod.serverless.worker:run_worker",
        JOBLOOP,
        "looks JobScaler up on its module when the loop starts, which is how install() puts the replacement in",
        texts=("rp_scale.JobScaler(",),
    ),
    Seam(
        "runpod.serverless.modules.worker_state:JobsProgress",
        JOBLOOP,
        "the SDK's set of jobs in progress: kept in memory (its file would hold a killed worker's jobs forever)",
        fields=("_load_state", "_save_state", "_STATE_FILE", "add", "get_job_count"),
    ),
    Seam("runpod.http_client:TooManyRequests", JOBLOOP, "a take refused with 429 backs off as the SDK does"),
)
