"""Start-up of `python handler.py`: build the worker once, then run jobs in the chosen mode.

Modes, decided before the engine starts (so a mistake costs no load time):
- `--test_input '<job json>'`, or no flags off RunPod with a test_input.json: run that one job
  through the real handler, print each chunk as it arrives, exit 0 (success) or 1 (error).
  (runpod 1.10's own local test never runs a generator handler.)
- `--rp_serve_api`: the RunPod SDK's local API server.
- on RunPod (RUNPOD_WEBHOOK_GET_JOB set): RunPod's production job loop.

A start that is refused exits with status 2, except on RunPod's job loop, where a refusal a restart cannot
fix (ON_REFUSED_START=serve, the default) keeps the worker up, answering every job with the cause
(serving/refused.py): RunPod restarts a worker that exits, into the same refusal, billing each start.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from tpworker import timeline
from tpworker.config.logs import configure_logging
from tpworker.config.settings import SettingsError, http_ports, load_settings, start_policy
from tpworker.errors import StartRefused, in_one_line
from tpworker.serving.lifecycle import Lifecycle

if TYPE_CHECKING:
    from tpworker.config.settings import Settings
    from tpworker.serving.job_input import JobOutput
    from tpworker.serving.refused import RefusedWorker
    from tpworker.serving.worker import Worker

log = logging.getLogger("tpworker")

# handler.py's handler(job): the job's outputs
Handler: TypeAlias = "Callable[[Any], AsyncIterator[JobOutput]]"

_worker: Worker | RefusedWorker | None = None  # the worker handler.handler() sends jobs to


def current_worker() -> Worker | RefusedWorker:
    """The worker handler.handler() sends jobs to. When handler.py was imported rather than run as a
    script (RunPod's local tools, a user's own tests), the first job starts it, as main() would: the
    job waits for the start (tens of seconds; nothing else is served meanwhile)."""
    if _worker is None:
        from tpworker.startup.plan import plan_start
        from tpworker.startup.start import start_worker

        configure_logging()
        settings = load_settings()
        started = start_worker(settings, plan_start(settings))
        atexit.register(started.close)  # vLLM's processes end with this one
        set_current_worker(started.worker)
        return started.worker
    return _worker


async def handle(job: Any) -> AsyncGenerator[JobOutput, None]:
    """handler.handler's body: the job's outputs, or, when the worker cannot start, one error that
    says why (503: no worker serves; the message names what to change)."""
    try:
        worker = current_worker()
    except StartRefused as e:
        from tpworker.serving.job_errors import service_unavailable

        log.error("Cannot start: %s", e)
        yield service_unavailable(f"The worker cannot start: {in_one_line(e)}").to_output()
        return
    async for chunk in worker.handle(job):
        yield chunk


def set_current_worker(worker: Worker | RefusedWorker | None) -> None:
    """The worker handler.handler() sends jobs to (None: none). Set by main() once the worker has
    started; the benchmark and the tests set theirs, started the same way (startup.start)."""
    global _worker
    _worker = worker


def _local_job(argv: list[str], handler_dir: Path, on_runpod: bool) -> Any:
    """The job of a local test run (its JSON: an object, unless the user's is not), or None when RunPod's
    SDK should take over."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--test_input")
    parser.add_argument("--rp_serve_api", action="store_true")
    args, _ = parser.parse_known_args(argv)
    if args.test_input is not None:
        text, origin = args.test_input, "--test_input"
    elif args.rp_serve_api or on_runpod:
        return None
    else:
        found = [p for p in (Path.cwd() / "test_input.json", handler_dir / "test_input.json") if p.is_file()]
        if not found:
            raise SettingsError(
                [
                    "Nothing to run: pass --test_input '<job json>', or put a test_input.json beside handler.py. "
                    "(On RunPod the job loop starts by itself; --rp_serve_api starts the SDK's local API.)"
                ]
            )
        text, origin = found[0].read_text(), str(found[0])
    try:
        job = json.loads(text)
    except json.JSONDecodeError as e:
        raise SettingsError([f"{origin} is not valid JSON: {e}"]) from None
    if isinstance(job, dict):
        job.setdefault("id", "local-test")
    return job


def _refusal(job: Any, settings: Settings) -> dict[str, Any] | None:
    """The error output the handler would give this job before generating, if any."""
    from tpworker.serving.batching import BatchPolicy
    from tpworker.serving.job_errors import JobError
    from tpworker.serving.job_input import parse_job
    from tpworker.serving.limits import Limits

    try:
        parse_job(
            job,
            default_batching=BatchPolicy.from_settings(settings.worker),
            limits=Limits.from_settings(settings.worker),
            native_output=settings.worker.native_output_format,
        )
    except JobError as e:
        return e.to_output()
    return None


def main(handler: Handler, handler_file: str) -> int:
    """Entry point of handler.py. Returns the process exit status."""
    configure_logging()  # before anything logs: secrets redacted from the first line
    lifecycle = Lifecycle()
    ports = http_ports()
    if ports is not None and not any(arg.startswith(("--test_input", "--rp_serve_api")) for arg in sys.argv[1:]):
        from tpworker.lb.serve import serve_http

        return serve_http(ports, lifecycle)  # a load-balancing endpoint: HTTP on PORT, bound before the start
    try:
        settings = load_settings()
        timeline.mark("settings read")
        local_job = _local_job(sys.argv[1:], Path(handler_file).resolve().parent, settings.on_runpod)
        from tpworker.startup.model_and_layout import plan_layout
        from tpworker.startup.plan import plan_start
        from tpworker.startup.start import start_worker

        layout = plan_layout(settings)  # no vLLM import yet: a bad plan costs seconds
        if local_job is not None and (refusal := _refusal(local_job, settings)):
            # A malformed local job fails before the engine starts, with the handler's error.
            print(f"--- job: {json.dumps(local_job)}\n--- job failed: {json.dumps(refusal['error'])}", flush=True)
            return 1
        started = start_worker(settings, plan_start(settings, layout), lifecycle=lifecycle)
    except StartRefused as e:
        for line in str(e).splitlines():
            log.error("Cannot start: %s", line)
        if _serves_refusal(e, sys.argv[1:]):
            return _serve_refusal(handler, lifecycle, e)
        log.error("Exiting with status 2%s.", " so that RunPod starts the worker again" if e.retryable else "")
        return 2
    set_current_worker(started.worker)
    try:
        if local_job is not None:
            from tpworker.local_run import run_local_job

            status: int = asyncio.run(run_local_job(handler, local_job))
            return status
        import runpod

        from tpworker.serving import jobloop

        # RunPod's job loop, without its 100 ms poll and 1 s sleeps (jobloop.py); the worker's own
        # start-of-loop work (SIGTERM chained onto the SDK's handler, the OpenAI layer's build) runs
        # once the loop has started.
        if settings.worker.job_loop == "worker":
            jobloop.install(on_loop_start=started.worker.loop_started)
        else:  # runpod's JobScaler unchanged: it has no start hook, so the first job starts the loop's work
            log.info(
                "JOB_LOOP=sdk: runpod's own JobScaler takes the jobs, unchanged; the first job starts the warm-up."
            )
            handler = _starting_the_loop_first(handler, started.worker)
        runpod.serverless.start(
            {
                "handler": handler,
                "concurrency_modifier": started.worker.concurrency,
                "return_aggregate_stream": True,
            }
        )
        log.info("The job loop has stopped; shutting down.")
        return 0
    finally:
        set_current_worker(None)
        started.close()


def _starting_the_loop_first(handler: Handler, worker: Worker) -> Handler:
    """The handler for runpod's own job loop: each job first waits for what jobloop's scaler runs when the
    loop starts (the SIGTERM chain, the warm-up, the OpenAI layer's build), begun by the first job."""

    async def handle_once_started(job: Any) -> AsyncIterator[JobOutput]:
        await worker.started_in_this_loop()
        async for chunk in handler(job):
            yield chunk

    return handle_once_started


def _serves_refusal(error: StartRefused, argv: list[str]) -> bool:
    """Stay up with the refusal: on RunPod's job loop (not a local test run), for a refusal a restart
    cannot fix, unless ON_REFUSED_START=exit."""
    policy = start_policy()
    local = any(arg.startswith(("--test_input", "--rp_serve_api")) for arg in argv)
    return policy.on_runpod and not local and not error.retryable and policy.on_refused_start == "serve"


def _serve_refusal(handler: Handler, lifecycle: Lifecycle, error: StartRefused) -> int:
    """RunPod's job loop with every job answered by the refusal, until RunPod stops the worker."""
    import runpod

    from tpworker.serving import jobloop
    from tpworker.serving.refused import RefusedWorker

    worker = RefusedWorker(lifecycle, error)
    log.error(
        "The worker stays up and answers every job with this refusal (a restart would be refused again). "
        "Fix the cause and redeploy; ON_REFUSED_START=exit makes it exit instead."
    )
    set_current_worker(worker)
    if start_policy().job_loop == "worker":
        jobloop.install()
    try:
        runpod.serverless.start(
            {"handler": handler, "concurrency_modifier": worker.concurrency, "return_aggregate_stream": True}
        )
    finally:
        set_current_worker(None)
    return 0
