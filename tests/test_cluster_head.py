"""`tpworker cluster head` end to end: it checks the plan, starts Ray, waits for the nodes the plan
needs, runs the worker (handler.py) on Ray, and stops Ray when the worker ends; and it gives up
with a clear message when nodes do not come. On this machine the worker then refuses Ray (vLLM's
CPU build cannot place ranks on it, see test_cluster.py): the refusal, passed through, is the
proof that the worker ran with the cluster's address and read the cluster."""

from __future__ import annotations

import secrets
import shutil

import pytest

from raycluster import Node, free_port, short_folder

pytestmark = pytest.mark.ray


@pytest.fixture
def folder():
    path = short_folder()
    yield path
    shutil.rmtree(path, ignore_errors=True)  # Ray's logs and sockets


def test_head_waits_for_the_join_then_runs_the_worker_on_ray(models, folder):
    # A token: the head, the joining node and the worker must all use it (RAY_AUTH_MODE=token).
    token = {"RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head = Node(
        ["head", "--nodes", "2", "--ray-port", str(free_port()), "--timeout", "120"],
        folder,
        "head",
        PIPELINE_PARALLEL_SIZE="2",
        **token,
    )
    join = None
    try:
        head.wait_for("waiting for 2 node(s), 2 CPU(s)")
        address = head.log().split("tpworker cluster join ")[1].split()[0]
        join = Node(["join", address, "--timeout", "60"], folder, "join", **token)
        assert head.wait(240) == 2, head.log()[-4000:]  # the worker's exit status: refused
        log = head.log()
        assert "Parallelism: TP=1 x PP=2 on Ray" in log  # checked first against 2 nodes like this one
        assert "Ray cluster ready: 2 node(s)" in log
        assert f"Ray cluster at {address}: 2 node(s), GPUs 0+0, CPUs 1+1." in log  # the worker read it
        assert "Layers per pipeline stage: 15, 15." in log
        assert "DISTRIBUTED_EXECUTOR_BACKEND=ray: vLLM's cpu platform cannot run its ranks on Ray" in log
        assert "Ray authentication: token" in log and "without token authentication" not in log
        assert token["RAY_AUTH_TOKEN"] not in log + join.log()
        assert log.index("Ray cluster ready") < log.index("Starting the worker on Ray")
        assert "Stopping Ray on this node." in log
        assert head.ray_processes() == []  # Ray on the head stopped with it
    finally:
        for node in (join, head):
            if node is not None:
                node.stop()


def test_head_gives_up_when_the_nodes_do_not_come(folder):
    head = Node(
        ["head", "--no-worker", "--nodes", "2", "--ray-port", str(free_port()), "--timeout", "5"], folder, "head"
    )
    try:
        assert head.wait(120) == 3
        log = head.log()
        assert (
            "The Ray cluster has 1 node(s), 0 GPU(s) (0), 1 CPU(s) (1) after 5 s, short of the 2 node(s) it "
            "waits for. Start `tpworker cluster join" in log
        )
        assert head.ray_processes() == []
    finally:
        head.stop()


def test_join_gives_up_when_no_head_answers(folder):
    address = f"127.0.0.1:{free_port()}"
    join = Node(["join", address, "--timeout", "2"], folder, "join")
    try:
        assert join.wait(60) == 3
        assert f"No Ray head answers at {address} after 2 s. Start `tpworker cluster head`" in join.log()
    finally:
        join.stop()


@pytest.mark.parametrize(
    "env,refusal",
    [
        ({"TENSOR_PARALLEL_SIZE": "3"}, "TENSOR_PARALLEL_SIZE=3 cannot split this model"),
        # 12 x 30 ranks: more than the cores of any machine the test runs on (1 node like this one)
        (
            {"TENSOR_PARALLEL_SIZE": "12", "PIPELINE_PARALLEL_SIZE": "30"},
            "needs 360 CPUs, but the Ray cluster has no GPU",
        ),
        ({"DISTRIBUTED_EXECUTOR_BACKEND": "mp"}, "DISTRIBUTED_EXECUTOR_BACKEND=mp keeps every rank on one node"),
    ],
)
def test_head_refuses_a_plan_before_starting_ray(models, folder, env, refusal):
    head = Node(["head", "--nodes", "1", "--ray-port", str(free_port())], folder, "head", **env)
    try:
        assert head.wait(60) == 2
        assert refusal in head.log()
        assert "Starting Ray" not in head.log()
    finally:
        head.stop()
