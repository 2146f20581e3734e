"""`python handler.py` as a load-balancing endpoint's worker: the HTTP server first, then the start.

RunPod sends requests straight to the worker on PORT and asks GET /ping on PORT_HEALTH (default PORT) whether
it may: 204 while it initializes, 200 when healthy. So the port is bound before anything loads, and /ping
answers 204 through the plan, the download, the engine's start and the warm-up. The server runs in a thread
with its own event loop; the worker starts on the main thread (vLLM's processes are spawned from it), then is
handed to that loop, whose first request binds the engine. SIGTERM: /ping stops answering healthy, requests in
flight get SHUTDOWN_GRACE_SECONDS to finish, then the process exits 0. An engine that dies ends the process
(the watchdog), as on the queue. A refused start keeps the server up, answering every request with the cause."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from tpworker.config.settings import HttpPorts
from tpworker.errors import StartRefused, in_one_line
from tpworker.lb.front import Front, FrontLimits
from tpworker.serving.lifecycle import Lifecycle, State

if TYPE_CHECKING:
    from tpworker.serving.worker import Worker

log = logging.getLogger(__name__)

BIND_TIMEOUT_S = 30.0


class HttpServers:
    """The uvicorn servers (PORT, and PORT_HEALTH when it differs) on one event loop in a thread."""

    def __init__(self, front: Front, ports: HttpPorts) -> None:
        def config(port: int) -> uvicorn.Config:
            return uvicorn.Config(front, host=ports.host, port=port, log_level="warning", lifespan="off")

        self.servers = [uvicorn.Server(config(port)) for port in dict.fromkeys((ports.port, ports.health_port))]
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="http-server", daemon=True)

    def _run(self) -> None:
        async def serve_all() -> None:
            self.loop = asyncio.get_running_loop()
            await asyncio.gather(*(server.serve() for server in self.servers))

        asyncio.run(serve_all())

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + BIND_TIMEOUT_S
        while not all(server.started for server in self.servers):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise StartRefused("The HTTP server could not listen on PORT / PORT_HEALTH (see the lines above).")
            time.sleep(0.02)

    def begin_serving(self, worker: Worker) -> None:
        """Run what the queue's job loop runs when it starts (the warm-up, the OpenAI layer) in the server's
        loop, which the engine then serves; returns once the worker is ready."""
        assert self.loop is not None

        async def begin() -> None:
            if (warm_up := worker.loop_started()) is not None:
                await warm_up

        asyncio.run_coroutine_threadsafe(begin(), self.loop).result()

    def stop(self) -> None:
        for server in self.servers:
            server.should_exit = True
        self._thread.join(30)


def serve_http(ports: HttpPorts, lifecycle: Lifecycle) -> int:
    """The whole life of an HTTP worker; returns the process's exit status."""
    from tpworker.config.settings import load_settings
    from tpworker.startup.model_and_layout import plan_layout
    from tpworker.startup.plan import plan_start
    from tpworker.startup.start import start_worker

    stopping = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    front = Front(lifecycle, FrontLimits(ports.max_in_flight, ports.timeout_s, ports.api_key))
    servers = HttpServers(front, ports)
    servers.start()
    log.info("Listening on port %s (GET /ping on %s): 204 until the worker is ready.", ports.port, ports.health_port)
    try:
        settings = load_settings()
        started = start_worker(settings, plan_start(settings, plan_layout(settings)), lifecycle=lifecycle)
    except StartRefused as e:
        front.refusal = in_one_line(e)
        log.error("Cannot start: %s", e)
        log.error("Every request is answered with this refusal until the worker is stopped.")
        stopping.wait()
        servers.stop()
        return 0
    try:
        front.worker = started.worker
        servers.begin_serving(started.worker)
        log.info("Serving HTTP on port %s.", ports.port)
        stopping.wait()
        _drain(front, lifecycle, started.worker.settings.shutdown_grace_seconds)
        servers.stop()
        return 0
    finally:
        started.close()


def _drain(front: Front, lifecycle: Lifecycle, grace: float) -> None:
    """SIGTERM: /ping stops answering healthy and new requests are refused; those in flight get the grace."""
    lifecycle.post(State.DRAINING, f"SIGTERM: finishing {front.in_flight} request(s) within {grace:g} s")
    deadline = time.monotonic() + grace
    while front.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    if front.in_flight:
        log.warning("%d request(s) still running after SHUTDOWN_GRACE_SECONDS=%g; exiting.", front.in_flight, grace)
