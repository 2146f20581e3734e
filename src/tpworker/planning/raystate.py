"""What a running Ray cluster has, read through Ray's public API (ray.init, ray.nodes): the alive
nodes and the GPUs and CPUs of each. No vLLM here, so the plan at start can check TP x PP against
the cluster within a second, before vLLM is imported."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

from tpworker.errors import StartRefused, in_one_line
from tpworker.planning.parallel import ClusterShape

log = logging.getLogger(__name__)


class RayUnavailable(StartRefused):
    """No Ray cluster to use; the message says how to get one."""


def split_address(address: str, default_port: int = 6379) -> tuple[str, int]:
    host, colon, port = address.rpartition(":")
    if not colon:
        return address, default_port
    if not host or not port.isdigit():
        raise RayUnavailable(f"{address!r} is not a Ray address: expected HOST:PORT, e.g. 10.65.0.2:6379.")
    return host, int(port)


def reachable(address: str, timeout: float = 2.0) -> bool:
    """The Ray head's port accepts connections (ray.init would wait minutes for one that does not)."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise RayUnavailable(
            "DISTRIBUTED_EXECUTOR_BACKEND=ray needs Ray, which is not installed: pip install 'tpworker[ray]' "
            "(vLLM's GPU image already has it)."
        ) from None
    return ray


@contextmanager
def connected(address: str | None) -> Iterator[ModuleType]:
    """A driver connection to the cluster at `address` (None: the one `ray start` began on this
    machine), closed on exit so that vLLM's own processes connect afresh."""
    ray = _import_ray()
    if address and not reachable(address):
        raise RayUnavailable(
            f"No Ray cluster answers at RAY_ADDRESS={address}. Start one with `tpworker cluster head` (or "
            f"`ray start --head`), or correct RAY_ADDRESS."
        )
    try:
        ray.init(address=address or "auto", logging_level=logging.WARNING, log_to_driver=False)
    except ConnectionError as e:
        raise RayUnavailable(
            f"DISTRIBUTED_EXECUTOR_BACKEND=ray but no Ray cluster was found ({in_one_line(e)}). "
            f"Start one with `tpworker cluster head` and `tpworker cluster join`, or set RAY_ADDRESS. A cluster that "
            f"requires a token needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN here too."
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _shape(ray: ModuleType, address: str) -> ClusterShape:
    alive = sorted((n for n in ray.nodes() if n.get("Alive")), key=lambda n: n.get("NodeManagerAddress", ""))
    return ClusterShape(
        gpus=tuple(int(n["Resources"].get("GPU", 0)) for n in alive),
        cpus=tuple(int(n["Resources"].get("CPU", 0)) for n in alive),
        address=address,
    )


def _address_of(ray: ModuleType, given: str | None) -> str:
    if given:
        return given
    gcs_address: str = ray.get_runtime_context().gcs_address  # the head's host:port, for messages
    return gcs_address


def cluster_shape(address: str | None) -> ClusterShape:
    with connected(address) as ray:
        return _shape(ray, _address_of(ray, address))


def wait_for_cluster(
    address: str,
    nodes: int,
    gpus: int = 0,
    cpus: int = 0,
    timeout: float = 600,
    report: Callable[[ClusterShape], None] | None = None,
    poll: float = 1.0,
) -> ClusterShape:
    """Wait until the cluster has `nodes` alive nodes and at least `gpus` GPUs and `cpus` CPUs in
    all; `report` hears every change. Raises TimeoutError with what is there."""
    deadline = time.monotonic() + timeout
    seen = None
    with connected(address) as ray:
        while True:
            shape = _shape(ray, address)
            if shape != seen and report is not None:
                report(shape)
            seen = shape
            if shape.nodes >= nodes and shape.total_gpus >= gpus and shape.total_cpus >= cpus:
                return shape
            if time.monotonic() >= deadline:
                raise TimeoutError(shape)
            time.sleep(poll)
