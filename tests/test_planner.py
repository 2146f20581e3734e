"""The planner on real published config.json files (tests/fixtures/configs, see SOURCES.md there).

GPU sizes are given as numbers: no GPU exists on this machine, so every GPU here is a test double
(its memory size, or a fake NVML module for the interconnect)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tpworker import cli
from tpworker.planning import planner
from tpworker.planning.hardware import Link, gpu_links
from tpworker.planning.memory import GB, GiB, MemoryModel
from tpworker.planning.modelinfo import ModelFacts, read_model_config
from tpworker.planning.parallel import valid_tp_sizes
from tpworker.planning.preflight import PreflightError, interconnect_findings, memory_findings

CONFIGS = Path(__file__).parent / "fixtures" / "configs"


def facts(name: str) -> ModelFacts:
    return ModelFacts.from_config(read_model_config(str(CONFIGS / f"{name}.json")))


def test_llama_3_70b_valid_sizes_with_kv_replication_beyond_8():
    llama = facts("llama-3-70b-instruct")
    assert (llama.attention_heads, llama.kv_heads) == (64, 8)
    assert valid_tp_sizes(llama) == [1, 2, 4, 8, 16, 32, 64]
    memory = MemoryModel(llama)
    assert [memory.kv_heads_per_rank(tp) for tp in (8, 16, 64)] == [1, 1, 1]  # one (copied) KV head per rank


def test_llama_3_70b_bf16_weights_per_gpu_within_3_percent_of_141_gb_over_tp():
    memory = MemoryModel(facts("llama-3-70b-instruct"))
    for tp in (1, 2, 4, 8):
        per_gpu = memory.rank(tp).weight_bytes / GB
        assert abs(per_gpu - 141 / tp) / (141 / tp) < 0.03, (tp, per_gpu)


def test_published_parameter_counts():
    billions = {
        name: MemoryModel(facts(name)).counts.total / 1e9
        for name in (
            "llama-3-8b-instruct",
            "llama-3-70b-instruct",
            "llama-3.1-405b-instruct",
            "mixtral-8x7b-instruct",
            "qwen2.5-72b-instruct",
            "qwen2.5-7b-instruct",
            "smollm2-135m-instruct",
        )
    }
    expected = {
        "llama-3-8b-instruct": 8.03,
        "llama-3-70b-instruct": 70.55,
        "llama-3.1-405b-instruct": 405.85,
        "mixtral-8x7b-instruct": 46.70,
        "qwen2.5-72b-instruct": 72.71,
        "qwen2.5-7b-instruct": 7.62,
        "smollm2-135m-instruct": 0.1348,
    }
    for name, value in expected.items():
        assert billions[name] == pytest.approx(value, rel=0.01), name


def test_valid_sizes_of_each_fixture():
    assert valid_tp_sizes(facts("llama-3-8b-instruct"), up_to=8) == [1, 2, 4, 8]
    assert valid_tp_sizes(facts("llama-3.1-405b-instruct"), up_to=16) == [1, 2, 4, 8, 16]
    assert valid_tp_sizes(facts("mixtral-8x7b-instruct")) == [1, 2, 4, 8, 16, 32]
    assert valid_tp_sizes(facts("qwen2.5-72b-instruct"), up_to=8) == [1, 2, 4, 8]
    # 9 heads: TP 3 only (9 itself would not split the MLP's 1536)
    assert valid_tp_sizes(facts("smollm2-135m-instruct")) == [1, 3]


def test_a_gqa_model_with_fewer_kv_heads_than_tp():
    qwen7b = facts("qwen2.5-7b-instruct")
    assert (qwen7b.attention_heads, qwen7b.kv_heads) == (28, 4)
    # 8 does not divide 28 heads; 7 and 14 divide the heads but not the 4 KV heads
    assert valid_tp_sizes(qwen7b) == [1, 2, 4]


def test_plan_command_on_llama_70b_with_8_gpus_of_80_gib(capsys):
    assert (
        cli.main(
            [
                "plan",
                str(CONFIGS / "llama-3-70b-instruct.json"),
                "--gpus",
                "8",
                "--gpu-memory",
                "80",
                "--max-model-len",
                "8192",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "Valid TP sizes up to 8: 1, 2, 4, 8" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line[:2].strip() in {"1", "2", "4", "8"}}
    for tp, gb in {"1": 141.1, "2": 70.6, "4": 35.3, "8": 17.6}.items():
        assert f"{gb} GB" in rows[tp]
    assert "NO" in rows["1"] and "weights do not fit" in rows["1"]
    assert "Recommended: TENSOR_PARALLEL_SIZE=4" in text
    assert "layers.*.self_attn.q_proj: colwise" in text


def test_plan_json_for_scripts(capsys):
    assert (
        cli.main(["plan", str(CONFIGS / "llama-3-70b-instruct.json"), "--gpus", "8", "--gpu-memory", "80", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["valid_sizes"] == [1, 2, 4, 8]
    assert [row["weights_fit"] for row in report["rows"]] == [False, True, True, True]
    assert report["recommended"] in (4, 8) and report["auto_on_gpus"] == 8


def test_plan_of_a_missing_model_says_so(capsys, tmp_path):
    assert cli.main(["plan", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_fp8_kv_cache_doubles_the_tokens_that_fit():
    llama = facts("llama-3-70b-instruct")
    bf16 = planner.build_report(
        str(CONFIGS / "llama-3-70b-instruct.json"), gpus=4, gpu_memory_gib=80, max_model_len=8192
    )
    fp8 = planner.build_report(
        str(CONFIGS / "llama-3-70b-instruct.json"), gpus=4, gpu_memory_gib=80, max_model_len=8192, kv_cache_dtype="fp8"
    )
    assert fp8.rows[-1].kv_tokens == pytest.approx(2 * bf16.rows[-1].kv_tokens, rel=0.001)
    assert llama.max_position_embeddings == 8192


def test_preflight_refuses_weights_larger_than_the_gpu():
    memory = MemoryModel(facts("llama-3-70b-instruct"))
    with pytest.raises(PreflightError) as caught:
        memory_findings(
            memory,
            tp=1,
            pp=1,
            gpu_bytes=80 * GiB,
            utilization=0.92,
            max_model_len=8192,
            max_concurrency=30,
            gpu_count=8,
        )
    message = str(caught.value)
    assert "141.1 GB per GPU at TP=1" in message and "TENSOR_PARALLEL_SIZE=8" in message


def test_preflight_refuses_no_room_for_one_request_of_max_model_len():
    # 70.6 GB of weights per GPU leave ~8.4 GB: about 51k tokens of KV cache at 160 KiB each
    memory = MemoryModel(facts("llama-3-70b-instruct"))
    with pytest.raises(PreflightError, match="fewer than one request of MAX_MODEL_LEN=65,536"):
        memory_findings(
            memory,
            tp=2,
            pp=1,
            gpu_bytes=80 * GiB,
            utilization=0.92,
            max_model_len=65536,
            max_concurrency=30,
            gpu_count=2,
        )
    # and a 405B on 8 H200s (141 GiB) does hold a 131k-token request
    found = memory_findings(
        MemoryModel(facts("llama-3.1-405b-instruct")),
        tp=8,
        pp=1,
        gpu_bytes=141 * GiB,
        utilization=0.92,
        max_model_len=131072,
        max_concurrency=1,
        gpu_count=8,
    )
    assert "101.5 GB of weights" in found.notes[0]


def test_preflight_notes_the_plan_and_warns_when_concurrency_does_not_fit():
    memory = MemoryModel(facts("llama-3-70b-instruct"))
    found = memory_findings(
        memory, tp=2, pp=1, gpu_bytes=80 * GiB, utilization=0.95, max_model_len=4096, max_concurrency=30, gpu_count=2
    )
    assert "70.6 GB of weights" in found.notes[0]
    assert any("fewer than MAX_CONCURRENCY=30" in w for w in found.warnings)
    roomy = memory_findings(
        memory, tp=8, pp=1, gpu_bytes=80 * GiB, utilization=0.92, max_model_len=8192, max_concurrency=30, gpu_count=8
    )
    assert roomy.warnings == []


def test_interconnect_warnings():
    nvlinked = [Link(0, 1, nvlink=True, p2p=True)]
    assert interconnect_findings(2, nvlinked, shm=16 * GiB).warnings == []
    pcie = interconnect_findings(2, [Link(0, 1, nvlink=False, p2p=False)], shm=64 * 2**20).warnings
    assert len(pcie) == 3
    assert "over PCIe" in pcie[0] and "Peer-to-peer" in pcie[1] and "--shm-size" in pcie[2]
    assert interconnect_findings(1, [], shm=1).warnings == []


class FakeNvml:
    """A stand-in for the NVML library on a machine with GPUs 0-1 joined by NVLink, 2 on PCIe."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        self.uuids = ["GPU-0", "GPU-1", "GPU-2"]

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 3

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, h):
        return self.uuids[h]

    def nvmlDeviceGetP2PStatus(self, a, b, index):
        nvlink = {a, b} == {0, 1}
        return 0 if (index == 0 or (index == 2 and nvlink)) else 1


def test_links_read_from_nvml_follow_cuda_visible_devices():
    assert gpu_links(None, 3, nvml=FakeNvml()) == [
        Link(0, 1, True, True),
        Link(0, 2, False, True),
        Link(1, 2, False, True),
    ]
    assert gpu_links("2,0", 2, nvml=FakeNvml()) == [Link(0, 1, False, True)]


def test_plan_estimates_the_start_against_runpods_init_timeout(capsys, monkeypatch):
    """Llama-3-70B's 141 GB: read at the assumed 0.5 GB/s the start passes RunPod's 7 minutes (282 s of reading
    plus 180 s allowed for the engine and compilation), which the plan says with the variable to raise; at a
    measured 3 GB/s, or with RUNPOD_INIT_TIMEOUT raised, it fits."""
    model = str(CONFIGS / "llama-3-70b-instruct.json")
    assert cli.main(["plan", model, "--gpus", "8", "--gpu-memory", "80"]) == 0
    text = capsys.readouterr().out
    assert "WARNING: Start estimate: about 7.7 min (weights 141.1 GB at 0.50 GB/s (assumed" in text
    assert "which exceeds RunPod's init timeout of 7.0 min (RUNPOD_INIT_TIMEOUT=420, RunPod's default)" in text
    assert "Raise RUNPOD_INIT_TIMEOUT on the endpoint to at least 693 s" in text
    assert cli.main(["plan", model, "--gpus", "8", "--gpu-memory", "80", "--read-speed", "3"]) == 0
    text = capsys.readouterr().out
    assert "WARNING" not in text and "at 3.00 GB/s (given): 47 s" in text and "within RunPod's init timeout" in text
    monkeypatch.setenv("RUNPOD_INIT_TIMEOUT", "900")
    assert cli.main(["plan", model, "--gpus", "8", "--gpu-memory", "80", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert not report["start_estimate_warns"] and "(RUNPOD_INIT_TIMEOUT=900)" in report["start_estimate"]


def test_the_read_speed_is_measured_on_the_weight_files_and_a_near_limit_start_warns(tmp_path):
    from tpworker.planning import start_time

    assert start_time.measure_read_speed(tmp_path) is None  # no weights
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 4 * 2**20)
    assert start_time.measure_read_speed(tmp_path) > 0
    estimate = start_time.StartEstimate(int(50e9), 1e9, "measured", compiles=False)  # 50 s + 60 s allowed
    sentence, warns = start_time.against_timeout(estimate, 420, "RunPod's default")
    assert not warns and "about 1.8 min" in sentence and "within" in sentence
    sentence, warns = start_time.against_timeout(estimate, 130, "RUNPOD_INIT_TIMEOUT=130")  # 110 s of 130: > 80%
    assert warns and "comes close to RunPod's init timeout of 2.2 min (RUNPOD_INIT_TIMEOUT=130)" in sentence
    assert "at least 165 s" in sentence
