"""A real two-node Ray cluster on this machine, formed by `tpworker cluster head` and `tpworker
cluster join` (each node a `ray start` with its own temp folder), and the worker's plan against it.

vLLM's CPU build cannot place its ranks on Ray (its CPU platform names no Ray resource); the
worker refuses that before loading, and the last test shows it is vLLM's own limit: vLLM started
directly on this cluster stops with "current platform cpu does not support ray." for PP=2 and for
TP=2 x PP=1. When a vLLM release lifts it, that test fails, and the refusal (which asks vLLM the
same question, async_llm.ray_unsupported_reason) lets the worker through."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ENGINE_ENV, ROOT
from raycluster import Node, free_port, short_folder

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(models):
    """Two Ray nodes of 1 CPU each: the head waits for the second before it reports ready."""
    folder = short_folder()
    port = free_port()
    head = Node(["head", "--no-worker", "--nodes", "2", "--ray-port", str(port), "--timeout", "120"], folder, "head")
    join = None
    try:
        head.wait_for("waiting for 2 node(s)")
        address = head.log().split("tpworker cluster join ")[1].split()[0]
        join = Node(["join", address, "--timeout", "60"], folder, "join")
        head.wait_for("Ray cluster ready: 2 node(s)")
        yield {"address": address, "head": head, "join": join}
    finally:
        for node in (join, head):
            if node is not None:
                node.stop()
        shutil.rmtree(folder, ignore_errors=True)  # Ray's logs and sockets


def settings_for(cluster, **env: str):
    from tpworker.config.settings import load_settings

    return load_settings(
        {**os.environ, **ENGINE_ENV, "DISTRIBUTED_EXECUTOR_BACKEND": "ray", "RAY_ADDRESS": cluster["address"], **env}
    )


def test_the_head_waited_for_the_joining_node(cluster):
    log = cluster["head"].log()
    assert "Ray cluster: 1 node(s), 0 GPU(s) (0), 1 CPU(s) (1); waiting for 2 node(s)." in log
    assert log.index("1 node(s), 0 GPU(s)") < log.index("Ray cluster ready: 2 node(s), 0 GPU(s) (0+0), 2 CPU(s) (1+1).")
    # the interface holding the node's address, for NCCL and gloo
    assert "NCCL_SOCKET_IFNAME=" in log and "GLOO_SOCKET_IFNAME=" in log
    assert "--node-ip-address" in log and "--block" in log


def test_the_cluster_shape_is_read_from_ray(cluster):
    from tpworker.planning import raystate

    shape = raystate.cluster_shape(cluster["address"])
    assert (shape.nodes, shape.gpus, shape.cpus) == (2, (0, 0), (1, 1))
    assert shape.address == cluster["address"]


def test_the_plan_at_start_checks_tp_x_pp_against_the_live_cluster(cluster):
    from tpworker.planning.parallel import PlanError
    from tpworker.startup.model_and_layout import plan_layout

    pp2 = plan_layout(settings_for(cluster, PIPELINE_PARALLEL_SIZE="2")).parallel
    assert (pp2.tensor_parallel_size, pp2.pipeline_parallel_size, pp2.backend) == (1, 2, "ray")
    assert pp2.layers_per_stage == (15, 15) and pp2.cluster.nodes == 2
    tp2 = plan_layout(settings_for(cluster, TENSOR_PARALLEL_SIZE="2")).parallel
    assert (tp2.tensor_parallel_size, tp2.pipeline_parallel_size) == (2, 1)
    with pytest.raises(
        PlanError,
        match=f"needs 4 CPUs, but the Ray cluster at {cluster['address']} has no GPU; "
        r"2 CPUs on 2 node\(s\) \(1 \+ 1\)",
    ):
        plan_layout(settings_for(cluster, TENSOR_PARALLEL_SIZE="2", PIPELINE_PARALLEL_SIZE="2"))


def test_no_cluster_at_ray_address_is_refused_at_once(models):
    from tpworker.config.settings import load_settings
    from tpworker.planning.raystate import RayUnavailable
    from tpworker.startup.model_and_layout import plan_layout

    settings = load_settings(
        {**os.environ, "DISTRIBUTED_EXECUTOR_BACKEND": "ray", "RAY_ADDRESS": f"127.0.0.1:{free_port()}"}
    )
    with pytest.raises(RayUnavailable, match="No Ray cluster answers at RAY_ADDRESS=127.0.0.1:"):
        plan_layout(settings)


def test_the_worker_refuses_ray_on_cpu_before_loading(cluster):
    from tpworker.startup.model_and_layout import StartError
    from tpworker.startup.plan import plan_start

    settings = settings_for(cluster, PIPELINE_PARALLEL_SIZE="2")
    with pytest.raises(
        StartError,
        match="DISTRIBUTED_EXECUTOR_BACKEND=ray: vLLM's cpu platform cannot run its ranks "
        "on Ray.*current platform cpu does not support ray",
    ):
        plan_start(settings)


VLLM_ON_RAY = textwrap.dedent("""
    import sys
    if __name__ == "__main__":
        from vllm import LLM
        tp, pp = map(int, sys.argv[1:3])
        try:
            LLM(model=sys.argv[3], tensor_parallel_size=tp, pipeline_parallel_size=pp, enforce_eager=True,
                distributed_executor_backend="ray", dtype="float32", kv_cache_memory_bytes=1 << 30, max_model_len=2048)
        except Exception as e:
            print("ENGINE FAILED:", type(e).__name__, flush=True)
            sys.exit(3)
        print("ENGINE STARTED", flush=True)
""")


@pytest.mark.parametrize("tp,pp", [(1, 2), (2, 1)])
def test_vllm_itself_cannot_place_cpu_ranks_on_ray(cluster, models, tmp_path, tp, pp):
    script = tmp_path / "vllm_on_ray.py"
    script.write_text(VLLM_ON_RAY)
    env = {
        **os.environ,
        "RAY_ADDRESS": cluster["address"],
        "RAY_AUTH_MODE": "disabled",
        "VLLM_CPU_OMP_THREADS_BIND": "0|1",
    }
    done = subprocess.run(
        [sys.executable, str(script), str(tp), str(pp), str(models[1])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 3, output[-4000:]
    assert "ValueError: current platform cpu does not support ray." in output, output[-4000:]
