"""`tpworker cluster head` / `tpworker cluster join ADDRESS`: a Ray cluster over several nodes (a
RunPod Instant Cluster), built by Ray's own `ray start` on each node, then the worker on the head.

What the wrapper adds to a bare `ray start`:
- the node registers with its address on the cluster network (NODE_ADDR on RunPod), not the
  management interface, and NCCL / gloo use the interface holding that address;
- Ray is told the node's real GPUs (CUDA_VISIBLE_DEVICES respected) and CPUs;
- a /dev/shm too small for NCCL is reported before anything starts;
- the head checks the TP x PP plan against the cluster it expects before starting Ray, waits
  until the cluster has the nodes and GPUs (on CPU: CPUs) the plan needs, with a timeout, and only
  then starts the worker with RAY_ADDRESS and DISTRIBUTED_EXECUTOR_BACKEND=ray.
Every node runs `ray start --block` as a child: when this command ends, its Ray node stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

from tpworker.config.logs import configure_logging
from tpworker.config.settings import ClusterEnvironment, Settings, load_cluster_environment, load_settings
from tpworker.errors import StartRefused
from tpworker.planning import hardware, raystate
from tpworker.planning.parallel import ClusterShape

log = logging.getLogger("tpworker.cluster.command")

RAY_PORT = 6379
EXIT_REFUSED, EXIT_TIMEOUT = 2, 3


class ClusterError(StartRefused):
    """The cluster cannot be formed; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Node:
    """This node as the cluster sees it."""

    ip: str
    gpus: int
    cpus: int
    environment: dict[str, str]  # for `ray start` (so for Ray's workers) and for the worker


def ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")  # the environment this command runs in
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if not found:
        raise ClusterError("Ray is not installed: pip install 'tpworker[ray]' (vLLM's GPU image already has it).")
    return found


def ray_auth(env: ClusterEnvironment) -> dict[str, str]:
    """Ray's authentication mode, the same on every node and on every process that connects:
    Ray would otherwise switch token authentication on by itself whenever ~/.ray/auth_token exists
    on a node, and a node or driver without the token is then refused."""
    if env.ray_auth_mode:
        return {}  # the user's own choice, passed on as it is
    if env.ray_auth_token_set:
        log.info("Ray authentication: token (RAY_AUTH_TOKEN is set; every node needs the same one).")
        return {"RAY_AUTH_MODE": "token"}
    log.warning(
        "The Ray cluster runs without token authentication: anyone who reaches its ports can run code on "
        "it. Set the same secret RAY_AUTH_TOKEN on every node to require it."
    )
    return {"RAY_AUTH_MODE": "disabled"}


def this_node(settings: Settings, env: ClusterEnvironment, node_ip: str | None, toward: str | None) -> Node:
    """This node's cluster address, devices, and the environment NCCL, gloo, Ray and vLLM need on it."""
    auth = ray_auth(env)
    # This process connects to Ray too (the head waits for the nodes through it): same mode, set
    # before Ray is imported, which reads it.
    os.environ.update(auth)
    if not (ip := node_ip or env.node_addr):
        import ray.util

        # The address this node reaches `toward` from (the head, for a joining node).
        node_ip_address: Callable[..., str] = ray.util.get_node_ip_address  # unannotated in Ray
        ip = node_ip_address(toward) if toward else node_ip_address()
    interface = hardware.network_interface(ip)
    environment = {**auth, "VLLM_HOST_IP": ip}  # vLLM's workers announce this address to each other
    nccl = env.nccl_socket_ifname or interface
    gloo = env.gloo_socket_ifname or env.nccl_socket_ifname or interface
    if nccl:
        environment["NCCL_SOCKET_IFNAME"] = nccl
    if gloo:
        environment["GLOO_SOCKET_IFNAME"] = gloo
    log.info(
        "This node: %s on interface %s (NCCL_SOCKET_IFNAME=%s, GLOO_SOCKET_IFNAME=%s).",
        ip,
        interface or "unknown",
        nccl or "NCCL's choice",
        gloo or "gloo's choice",
    )
    gpus = len(hardware.visible_gpus(settings.cuda_visible_devices))
    return Node(ip, gpus, len(hardware.usable_cpus()), environment)


def check_shm(ranks_here: str) -> None:
    from tpworker.planning.preflight import shm_warning

    if warning := shm_warning(hardware.shm_bytes(), ranks_here):
        log.warning(warning)


def ray_start(node: Node, role: list[str], extra: list[str]) -> subprocess.Popen[bytes]:
    """`ray start ... --block` as a child: it runs the Ray node until it is told to stop."""
    command = [
        ray_executable(),
        "start",
        *role,
        "--node-ip-address",
        node.ip,
        "--num-gpus",
        str(node.gpus),
        "--num-cpus",
        str(node.cpus),
        "--disable-usage-stats",
        "--block",
        *extra,
    ]  # the user's last: they win
    log.info("Starting Ray: %s", " ".join(command))
    return subprocess.Popen(command, env={**os.environ, **node.environment})


def stop(process: subprocess.Popen[bytes] | None, what: str, grace: float) -> None:
    if process is None or process.poll() is not None:
        return
    log.info("Stopping %s.", what)
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_reachable(address: str, ray: subprocess.Popen[bytes] | None, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not raystate.reachable(address):
        if ray is not None and ray.poll() is not None:
            raise ClusterError(f"`ray start` exited with status {ray.returncode}; its output is above.")
        if time.monotonic() >= deadline:
            raise TimeoutError(what)
        time.sleep(1)


def _terminate_on_sigterm() -> None:
    """SIGTERM (a pod stopping) unwinds like Ctrl-C, so the worker and Ray are stopped in order."""

    def handler(signum: int, frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _needs(settings: Settings, node: Node, nodes: int) -> tuple[int, int]:
    """(GPUs, CPUs) the worker's plan needs from the cluster, checked first against `nodes` nodes
    like this one, so that a layout the cluster can never hold is refused before Ray starts."""
    from tpworker.startup.model_and_layout import plan_layout

    expected = ClusterShape((node.gpus,) * nodes, (node.cpus,) * nodes)
    parallel = plan_layout(settings, cluster=expected).parallel
    ranks = parallel.tensor_parallel_size * parallel.pipeline_parallel_size
    return (ranks, 0) if node.gpus else (0, ranks)


def _describe(shape: ClusterShape) -> str:
    return (
        f"{shape.nodes} node(s), {shape.total_gpus} GPU(s) ({'+'.join(map(str, shape.gpus))}), "
        f"{shape.total_cpus} CPU(s) ({'+'.join(map(str, shape.cpus))})"
    )


def worker_command(args: argparse.Namespace) -> list[str]:
    if args.dev:
        command = [sys.executable, "-m", "tpworker", "dev", "--host", args.host, "--port", str(args.port)]
        return command + (["--handler", args.handler] if args.handler else [])
    from tpworker.dev.server import find_handler

    return [sys.executable, str(find_handler(args.handler))]


def head(args: argparse.Namespace) -> int:
    settings, env = load_settings(), load_cluster_environment()
    if settings.worker.distributed_executor_backend == "mp":
        raise ClusterError(
            "DISTRIBUTED_EXECUTOR_BACKEND=mp keeps every rank on one node; `tpworker cluster` "
            "runs them on Ray. Unset it, or set it to ray."
        )
    settings = dataclasses.replace(
        settings, worker=settings.worker.model_copy(update={"distributed_executor_backend": "ray"})
    )
    nodes = args.nodes or env.num_nodes or settings.worker.pipeline_parallel_size
    node = this_node(settings, env, args.node_ip, toward=None)
    gpus, cpus = (0, 0) if args.no_worker else _needs(settings, node, nodes)
    check_shm("the ranks of this node")
    address = f"{node.ip}:{args.ray_port}"
    _terminate_on_sigterm()
    ray = worker = None
    try:
        ray = ray_start(node, ["--head", "--port", str(args.ray_port)], args.ray_args)
        try:
            wait_reachable(address, ray, 120, "the Ray head")
        except TimeoutError:
            raise ClusterError(f"The Ray head did not open {address} within 120 s; its output is above.") from None
        log.info("Ray head at %s. On each other node run: tpworker cluster join %s", address, address)
        wanted = f"{nodes} node(s)" + (f", {gpus} GPU(s)" if gpus else "") + (f", {cpus} CPU(s)" if cpus else "")
        try:
            shape = raystate.wait_for_cluster(
                address,
                nodes,
                gpus,
                cpus,
                args.timeout,
                report=lambda s: log.info("Ray cluster: %s; waiting for %s.", _describe(s), wanted),
            )
        except TimeoutError as e:
            log.error(
                "The Ray cluster has %s after %g s, short of the %s it waits for. Start `tpworker "
                "cluster join %s` on the other nodes (they must reach %s), or change --nodes / the sizes.",
                _describe(e.args[0]),
                args.timeout,
                wanted,
                address,
                address,
            )
            return EXIT_TIMEOUT
        log.info("Ray cluster ready: %s.", _describe(shape))
        if args.no_worker:
            log.info("No worker (--no-worker): Ray runs until this command is stopped.")
            return ray.wait()
        command = worker_command(args)
        log.info("Starting the worker on Ray: %s", " ".join(command))
        worker_env = {**os.environ, **node.environment, "RAY_ADDRESS": address, "DISTRIBUTED_EXECUTOR_BACKEND": "ray"}
        worker = subprocess.Popen(command, env=worker_env)
        code = worker.wait()
        log.info("The worker exited with status %d.", code)
        return code
    except KeyboardInterrupt:
        return 130
    finally:
        stop(worker, "the worker", 90)
        stop(ray, "Ray on this node", 60)


def join(args: argparse.Namespace) -> int:
    settings, env = load_settings(), load_cluster_environment()
    host, port = raystate.split_address(args.address, RAY_PORT)
    address = f"{host}:{port}"
    log.info("Waiting up to %g s for the Ray head at %s.", args.timeout, address)
    try:
        wait_reachable(address, None, args.timeout, "the head")
    except TimeoutError:
        log.error(
            "No Ray head answers at %s after %g s. Start `tpworker cluster head` on the head node first, "
            "and check that this node reaches %s (the cluster network's address, not the public one).",
            address,
            args.timeout,
            address,
        )
        return EXIT_TIMEOUT
    node = this_node(settings, env, args.node_ip, toward=address)
    check_shm("the ranks of this node")
    _terminate_on_sigterm()
    ray = None
    try:
        ray = ray_start(node, ["--address", address], args.ray_args)
        return ray.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        stop(ray, "Ray on this node", 60)


def _run(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        configure_logging()
        try:
            return action(args)
        except StartRefused as e:
            for line in str(e).splitlines():
                log.error("Cannot start: %s", line)
            return EXIT_REFUSED

    return run


def split_ray_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """`tpworker cluster ... -- ARGS`: ARGS go to `ray start` as they are (argparse alone cannot
    take them after join's ADDRESS)."""
    if argv[:1] == ["cluster"] and "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return list(argv), []


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`tpworker cluster head|join` on the CLI's subcommands."""
    cluster = commands.add_parser(
        "cluster",
        help="run the worker across nodes on Ray: `head` on one node, `join ADDRESS` on the others",
        description="Form a Ray cluster with `ray start` on each node (network interface, GPUs and /dev/shm "
        "checked), then run the worker on the head with DISTRIBUTED_EXECUTOR_BACKEND=ray. Arguments after -- go "
        "to `ray start` as they are.",
    )
    roles = cluster.add_subparsers(dest="role", required=True)
    head_parser = roles.add_parser(
        "head",
        help="start the Ray head, wait for the nodes, then run the worker",
        usage="tpworker cluster head [options] [-- RAY_START_ARGS ...]",
    )
    head_parser.add_argument(
        "--nodes", type=int, help="nodes to wait for (default: NUM_NODES, else PIPELINE_PARALLEL_SIZE)"
    )
    head_parser.add_argument("--ray-port", type=int, default=RAY_PORT, help=f"the Ray head's port (default {RAY_PORT})")
    head_parser.add_argument(
        "--dev",
        action="store_true",
        help="run `tpworker dev` (RunPod's endpoint API and /openai/v1 over HTTP) instead of handler.py",
    )
    head_parser.add_argument("--host", default="0.0.0.0", help="--dev: address to listen on (default 0.0.0.0)")
    head_parser.add_argument("--port", type=int, default=8000, help="--dev: port to listen on (default 8000)")
    head_parser.add_argument("--handler", help="the worker's handler.py (default: ./handler.py, else the repository's)")
    head_parser.add_argument(
        "--no-worker", action="store_true", help="only form the cluster; keep Ray running until stopped"
    )
    join_parser = roles.add_parser(
        "join",
        help="add this node to the Ray cluster whose head is at ADDRESS",
        usage="tpworker cluster join [options] ADDRESS [-- RAY_START_ARGS ...]",
    )
    join_parser.add_argument("address", help="the head's HOST:PORT, e.g. $PRIMARY_ADDR:6379 on RunPod")
    for role, action, waits_for in ((head_parser, head, "the other nodes"), (join_parser, join, "the head")):
        role.add_argument("--timeout", type=float, default=600, help=f"seconds to wait for {waits_for} (default 600)")
        role.add_argument(
            "--node-ip",
            help="this node's address on the cluster network (default: NODE_ADDR, else the address Ray finds)",
        )
        role.set_defaults(run=_run(action), ray_args=[])
