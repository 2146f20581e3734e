"""Pipeline parallelism and multi-node plans, from config.json alone: how vLLM splits the layers,
TP x PP against one node (mp) and against a Ray cluster (ray), and `tpworker plan --nodes`.

GPU counts are numbers (no GPU exists here): a Ray cluster's shape is given as its nodes' GPUs.
The live-cluster and engine halves are in test_cluster.py and test_pipeline_parallel.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tpworker import cli
from tpworker.config.settings import SettingsError, load_settings
from tpworker.planning.modelinfo import ModelFacts, read_model_config
from tpworker.planning.parallel import ClusterShape, PlanError, plan_parallelism, pp_layer_split

CONFIGS = Path(__file__).parent / "fixtures" / "configs"
LLAMA_405B = str(CONFIGS / "llama-3.1-405b-instruct.json")


def facts(name: str) -> ModelFacts:
    return ModelFacts.from_config(read_model_config(str(CONFIGS / f"{name}.json")))


def nodes_of(gpus: int, count: int) -> ClusterShape:
    return ClusterShape((gpus,) * count, (64,) * count, address="10.65.0.2:6379")


def test_layers_split_as_vllm_splits_them(monkeypatch):
    from vllm.distributed.utils import get_pp_indices

    for layers, pp in [(30, 2), (30, 4), (126, 4), (80, 3), (5, 3), (32, 5), (7, 7)]:
        ours = pp_layer_split(layers, pp)
        theirs = [get_pp_indices(layers, rank, pp) for rank in range(pp)]
        assert [end - start for start, end in theirs] == ours, (layers, pp)
    assert pp_layer_split(126, 4) == [31, 32, 32, 31]
    monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", "10,20")  # vLLM reads it at each call
    assert [end - start for start, end in (get_pp_indices(30, r, 2) for r in range(2))] == [10, 20]
    assert pp_layer_split(30, 2, "10,20") == [10, 20]


def test_a_layer_partition_vllm_would_refuse_in_its_ranks_is_refused_at_start():
    with pytest.raises(PlanError, match="sum to the model's 30 layers .* gives 2 stages, 31 layers.*15,15"):
        pp_layer_split(30, 2, "10,21")
    with pytest.raises(PlanError, match="gives 3 stages"):
        pp_layer_split(30, 2, "10,10,10")
    with pytest.raises(PlanError, match="at least one"):
        pp_layer_split(30, 2, "0,30")
    with pytest.raises(PlanError, match="not a comma-separated list"):
        pp_layer_split(30, 2, "ten,twenty")
    with pytest.raises(PlanError, match="PIPELINE_PARALLEL_SIZE=31 exceeds the model's 30 layers"):
        pp_layer_split(30, 31)


def test_the_plan_names_each_stages_layers():
    llama = facts("llama-3.1-405b-instruct")
    plan = plan_parallelism(llama, gpus=8, tp=8, pp=4, backend="ray", cluster=nodes_of(8, 4))
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.backend) == (8, 4, "ray")
    assert plan.layers_per_stage == (31, 32, 32, 31)
    one = plan_parallelism(llama, gpus=8, tp=8, pp=1)
    assert one.layers_per_stage == (126,) and one.backend is None


def test_on_one_node_tp_x_pp_beyond_the_gpus_is_refused_and_ray_is_named():
    llama = facts("llama-3.1-405b-instruct")
    with pytest.raises(PlanError, match=r"needs 32 GPUs, but this worker sees 8\..*DISTRIBUTED_EXECUTOR_BACKEND=ray"):
        plan_parallelism(llama, gpus=8, tp=8, pp=4)
    with pytest.raises(PlanError, match="needs 32 GPUs"):
        plan_parallelism(llama, gpus=8, tp=8, pp=4, backend="mp")


def test_on_ray_tp_x_pp_may_exceed_this_node_within_the_cluster():
    llama = facts("llama-3.1-405b-instruct")
    plan = plan_parallelism(llama, gpus=8, tp=8, pp=4, backend="ray", cluster=nodes_of(8, 4))
    assert "32 GPUs on 4 node(s) (8 + 8 + 8 + 8)" in plan.reason and plan.warning is None
    with pytest.raises(
        PlanError,
        match=r"needs 40 GPUs, but the Ray cluster at 10.65.0.2:6379 has 32 GPUs on 4 "
        r"node\(s\).*tpworker cluster join 10.65.0.2:6379",
    ):
        plan_parallelism(llama, gpus=8, tp=8, pp=5, backend="ray", cluster=nodes_of(8, 4))


def test_on_ray_tp_stays_within_a_node():
    llama = facts("llama-3.1-405b-instruct")
    with pytest.raises(
        PlanError,
        match="TENSOR_PARALLEL_SIZE=16 would split each layer across nodes: the largest "
        "node of the Ray cluster has 8 GPUs.*TENSOR_PARALLEL_SIZE=8 x "
        "PIPELINE_PARALLEL_SIZE=4",
    ):
        plan_parallelism(llama, gpus=8, tp=16, pp=2, backend="ray", cluster=nodes_of(8, 4))


def test_on_ray_auto_takes_a_whole_node_per_stage():
    llama = facts("llama-3.1-405b-instruct")
    auto = plan_parallelism(llama, gpus=8, tp=None, pp=4, backend="ray", cluster=nodes_of(8, 4))
    assert (auto.tensor_parallel_size, auto.warning) == (8, None)
    uneven = plan_parallelism(llama, gpus=8, tp=None, pp=2, backend="ray", cluster=ClusterShape((8, 4), (64, 64)))
    assert uneven.tensor_parallel_size == 4 and "4 GPU(s) of the Ray cluster stay idle" in uneven.warning


def test_on_ray_the_worker_must_run_on_a_gpu_node_of_a_gpu_cluster():
    with pytest.raises(PlanError, match="this node has none: vLLM takes its platform from the node"):
        plan_parallelism(facts("llama-3-70b-instruct"), gpus=0, tp=8, pp=2, backend="ray", cluster=nodes_of(8, 2))


def test_on_a_cpu_ray_cluster_ranks_are_counted_in_cpus(models):
    padded = ModelFacts.from_config(read_model_config(str(models[1])))
    cpus = ClusterShape((0, 0), (1, 1), address="127.0.0.1:6379")
    assert plan_parallelism(padded, gpus=0, tp=None, pp=2, backend="ray", cluster=cpus).tensor_parallel_size == 1
    assert plan_parallelism(padded, gpus=0, tp=2, pp=1, backend="ray", cluster=cpus).tensor_parallel_size == 2
    with pytest.raises(PlanError, match="needs 4 CPUs, but the Ray cluster at 127.0.0.1:6379 has no GPU; 2 CPUs"):
        plan_parallelism(padded, gpus=0, tp=2, pp=2, backend="ray", cluster=cpus)


def test_distributed_executor_backend_is_a_worker_setting_read_before_vllm():
    assert load_settings({}).worker.distributed_executor_backend is None
    assert load_settings({"DISTRIBUTED_EXECUTOR_BACKEND": "Ray"}).worker.distributed_executor_backend == "ray"
    assert load_settings({"DISTRIBUTED_EXECUTOR_BACKEND": "mp"}).worker.distributed_executor_backend == "mp"
    with pytest.raises(SettingsError, match="DISTRIBUTED_EXECUTOR_BACKEND='uni' is not valid.*Accepted: mp or ray"):
        load_settings({"DISTRIBUTED_EXECUTOR_BACKEND": "uni"})
    settings = load_settings({"RAY_ADDRESS": "10.65.0.2:6379", "VLLM_PP_LAYER_PARTITION": "10,20"})
    assert (settings.ray_address, settings.pp_layer_partition) == ("10.65.0.2:6379", "10,20")


def test_distributed_executor_backend_is_not_read_twice():
    from tpworker.vllm_bridge import arguments

    assert "distributed_executor_backend" not in arguments.engine_arg_names()
    # the settings' own variable, so vllm_args() never sees it
    assert (
        load_settings({"DISTRIBUTED_EXECUTOR_BACKEND": "ray"}).vllm_args().get("distributed_executor_backend") is None
    )


def test_plan_405b_on_4_nodes_of_8_gpus_recommends_tp8_x_pp4(capsys):
    assert cli.main(["plan", LLAMA_405B, "--gpus", "8", "--nodes", "4", "--gpu-memory", "80"]) == 0
    text = capsys.readouterr().out
    assert "Recommended: TENSOR_PARALLEL_SIZE=8 x PIPELINE_PARALLEL_SIZE=4 on Ray" in text
    assert "Layers per stage (vLLM's split): 31, 32, 32, 31." in text
    rows = [line.split() for line in text.splitlines() if line[:1].isdigit()]
    by_layout = {(row[0], row[1]): row for row in rows}
    # one node cannot hold 812 GB of bf16 weights at any TP; every PP row of 8 GPUs per node can
    assert all("NO" in by_layout[(tp, "1")] for tp in ("1", "2", "4", "8"))
    assert [by_layout[("8", pp)][2] for pp in ("2", "3", "4")] == ["63+63", "42+42+42", "31+32+32+31"]
    assert all("yes" in by_layout[("8", pp)] for pp in ("2", "3", "4"))

    assert cli.main(["plan", LLAMA_405B, "--gpus", "8", "--nodes", "4", "--gpu-memory", "80", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["recommended"], report["recommended_pp"], report["nodes"]) == (8, 4, 4)


def test_plan_with_nodes_keeps_a_model_that_fits_on_one_node(capsys):
    assert (
        cli.main(
            [
                "plan",
                str(CONFIGS / "llama-3-70b-instruct.json"),
                "--gpus",
                "8",
                "--nodes",
                "2",
                "--gpu-memory",
                "80",
                "--max-model-len",
                "8192",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "Recommended: TENSOR_PARALLEL_SIZE=4:" in text and "One node is enough" in text


def test_plan_with_a_short_context_needs_fewer_nodes(capsys):
    assert (
        cli.main(["plan", LLAMA_405B, "--gpus", "8", "--nodes", "4", "--gpu-memory", "80", "--max-model-len", "8192"])
        == 0
    )
    assert "Recommended: TENSOR_PARALLEL_SIZE=8 x PIPELINE_PARALLEL_SIZE=2 on Ray" in capsys.readouterr().out
