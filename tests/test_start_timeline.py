"""The start-up timeline (tpworker.timeline) and how vLLM's start records become its phases
(vllm_bridge/start_records.py), without an engine: the real starts' timelines are checked in
test_handler_cli (TP=2, `python handler.py`) and test_native_jobs (the warm-up)."""

from __future__ import annotations

import json
import logging
import logging.config
import types

from tpworker.timeline import StartTimeline
from tpworker.vllm_bridge import start_records


def test_phases_last_from_the_mark_before_them_in_time_order():
    timeline = StartTimeline(began=100.0)
    timeline.mark("engine ready", at=130.0)
    timeline.mark("settings read", at=101.5)
    timeline.mark("weights loaded", "0.14 GiB per rank", at=120.0)
    phases = timeline.phases()
    assert [p.phase for p in phases] == ["settings read", "weights loaded", "engine ready"]
    assert [round(p.seconds, 2) for p in phases] == [1.5, 18.5, 10.0]
    assert [p.ends_at for p in phases] == [1.5, 20.0, 30.0]
    summary = timeline.summary()
    assert summary.startswith("settings read 1.50 s; weights loaded 18.50 s (0.14 GiB per rank); engine ready")
    assert summary.endswith("engine ready at 30.0 s since the process began")


def test_a_once_only_phase_is_marked_once():
    timeline = StartTimeline(began=0.0)
    assert timeline.mark_once("first job taken")
    assert not timeline.mark_once("first job taken")
    assert [p.phase for p in timeline.phases()] == ["first job taken"]
    assert StartTimeline(began=0.0).summary() == "no phase recorded"


def _record(message: str, process: str = "EngineCore") -> logging.LogRecord:
    record = logging.LogRecord("vllm.v1.engine.core", logging.INFO, __file__, 1, message, None, None)
    record.vllm_process_name = process
    return record


def test_the_records_file_keeps_start_messages_only_as_json_lines(tmp_path):
    """The handler vLLM's processes get: their start records, one JSON object a line, nothing else."""
    records = start_records.StartRecords()
    try:
        config = json.loads(records.config_path.read_text())
        # vLLM's own console handler stays as vLLM configures it; ours is added beside it
        assert config["loggers"]["vllm"]["handlers"] == ["vllm", "tpworker_start"]
        assert config["handlers"]["vllm"]["class"] == "logging.StreamHandler"
        handler_config = {**config["handlers"]["tpworker_start"]}
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"json": config["formatters"]["tpworker_start"]},
                "filters": {"start": config["filters"]["tpworker_start"]},
                "handlers": {"file": {**handler_config, "formatter": "json", "filters": ["start"]}},
                "loggers": {"tpworker-test-vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}},
            }
        )
        logger = logging.getLogger("tpworker-test-vllm")
        logger.info("Loading weights took %.2f seconds", 2.23)
        logger.info("Reducing Torch threads from 2 to 1 for serving.")  # not a start phase
        logger.info("CPU KV cache size: %s tokens, Maximum concurrency for 8,192 tokens per request: 8.53x", "69,888")
        for handler in logger.handlers:
            handler.close()
        lines = [json.loads(line) for line in records.path.read_text().splitlines()]
        kept = [line["message"].split(" took")[0].split(":")[0] for line in lines]
        assert kept == ["Loading weights", "CPU KV cache size"]
        assert all({"at", "pid", "process"} <= set(line) for line in lines)
        assert [r.phase for r in records.read()] == ["weights read", "KV cache sized"]
    finally:
        logging.getLogger("tpworker-test-vllm").handlers.clear()
        records.remove()
    assert not records.path.exists() and not records.config_path.exists()


def test_records_become_one_mark_per_phase_at_the_slowest_rank():
    lines = [
        {"at": 10.0, "process": "EngineCore", "message": "Initializing a V1 LLM engine (v0.32.0) with config: ..."},
        {"at": 12.0, "process": "Worker_TP1", "message": "Starting to load model /models/m..."},
        {"at": 12.5, "process": "Worker_TP0", "message": "Starting to load model /models/m..."},
        {"at": 13.0, "process": "Worker_TP0", "message": "Checkpoint size: 0.27 GiB. Available RAM: 21.07 GiB."},
        {"at": 15.0, "process": "Worker_TP0", "message": "Loading weights took 2.25 seconds"},
        {"at": 15.5, "process": "Worker_TP1", "message": "Warming up done."},
        {"at": 15.8, "process": "Worker_TP0", "message": "Warming up done."},
        {"at": 16.0, "process": "EngineCore", "message": "CPU KV cache size: 69,888 tokens, Maximum concurrency ..."},
        {
            "at": 27.0,
            "process": "EngineCore",
            "message": "init engine (profile, create kv cache, warmup model) took 11.26 s",
        },
        "a line cut short by a killed process {",
    ]
    text = [json.dumps(line) if isinstance(line, dict) else line for line in lines]
    marks = start_records.timeline_marks(list(start_records._parse(text)), ranks=2)
    assert [(phase, at) for phase, at, _ in marks] == [
        ("engine core up", 10.0),
        ("ranks up", 12.5),
        ("weights loaded", 15.0),
        ("compiled (the CPU warm-up pass)", 15.8),
        ("KV cache sized", 16.0),
        ("engine core ready (profiled, warmed up)", 27.0),
    ]
    details = {phase: detail for phase, _, detail in marks}
    assert details["ranks up"] == "2 rank(s) loading"
    assert details["weights loaded"] == "0.14 GiB per rank in 2.2 s, 0.06 GiB/s"  # 0.27 GiB shared by 2 ranks
    assert details["KV cache sized"] == "69,888 tokens"


def test_gpu_ranks_report_their_own_weights_and_the_compile_cache_shows():
    lines = [
        {"at": 5.0, "process": "Worker_TP0", "message": "Model loading took 32.9 GiB memory and 41.500000 seconds"},
        {"at": 5.2, "process": "Worker_TP1", "message": "Model loading took 32.9 GiB memory and 42.000000 seconds"},
        {
            "at": 9.0,
            "process": "Worker_TP0",
            "message": "[backbone] Directly load the compiled graph(s) for compile range (1, 8192) from the cache, "
            "took 3.120 s",
        },
        {"at": 9.5, "process": "Worker_TP1", "message": "[backbone] Directly load AOT compilation from path /v/m"},
        {"at": 20.0, "process": "Worker_TP0", "message": "Graph capturing finished in 11 secs, took 0.45 GiB"},
    ]
    marks = start_records.timeline_marks(list(start_records._parse([json.dumps(x) for x in lines])), ranks=2)
    details = {phase: detail for phase, _, detail in marks}
    assert details["weights loaded"] == "32.90 GiB per rank in 42.0 s, 0.78 GiB/s"
    assert details["compiled graphs loaded from the cache"] == "vLLM: 3.120 s"
    assert details["graphs captured"] == "0.45 GiB"
    assert "compiled model loaded from the cache" in details


def test_a_user_logging_configuration_is_left_alone(monkeypatch, tmp_path):
    own = tmp_path / "logging.json"
    own.write_text("{}")
    args = types.SimpleNamespace(logging_config=None, log_config_file=None)
    assert start_records.recordable(args) is None
    monkeypatch.setenv("VLLM_LOGGING_CONFIG_PATH", str(own))
    assert start_records.recordable(args) == "VLLM_LOGGING_CONFIG_PATH is set"
    with start_records.kept(args) as records:
        assert records.marks(ranks=1) == [] and args.logging_config is None
    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH")
    monkeypatch.setenv("VLLM_CONFIGURE_LOGGING", "0")
    assert start_records.recordable(args) == "VLLM_CONFIGURE_LOGGING=0"
