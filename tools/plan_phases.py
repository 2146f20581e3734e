"""The worker's own start before the engine: settings, layout and plan_start, in a fresh process.

    .venv/bin/python tools/plan_phases.py [runs] [--against-raw]

Runs the start's first steps as handler.py does (the default model with MODEL_NAME unset; TP=2 unless
TENSOR_PARALLEL_SIZE is set) in `runs` fresh processes (default 3) and prints each one's timeline: when
settings were read, vLLM imported and the engine's arguments checked, in seconds since the process began.

With --against-raw, each run is a pair of fresh processes, in turn: the worker's main thread up to the point
where vLLM spawns its engine core (plan_start, vLLM's engine configuration, AsyncLLM's modules), and the raw
engine's (`from vllm import AsyncEngineArgs`, the same engine arguments, the configuration, the same modules),
so the two differ only in what the worker does before the spawn; then the medians.
A one-off measurement for the README's cold-start section, not a test.
"""

import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import json
from tpworker import timeline
from tpworker.config.settings import load_settings
from tpworker.startup.model_and_layout import plan_layout
from tpworker.startup.plan import plan_start

settings = load_settings()
timeline.mark("settings read")
plan_start(settings, plan_layout(settings))
print(json.dumps({p.phase: round(p.ends_at, 2) for p in timeline.TIMELINE.phases()}))
"""

# What both paths do last before AsyncLLM spawns the engine core: the configuration, AsyncLLM's modules.
_TO_THE_SPAWN = """
import vllm.v1.engine.async_llm, vllm.v1.engine.core_client
print(json.dumps({"to the spawn": round(time.time() - psutil.Process().create_time(), 2)}))
"""

WORKER_TO_SPAWN = (
    """
import json, pickle, sys, time, psutil
from vllm import AsyncEngineArgs
from tpworker.config.settings import load_settings
from tpworker.startup.model_and_layout import plan_layout
from tpworker.startup.plan import plan_start
from tpworker.vllm_bridge import async_llm

settings = load_settings()
plan = plan_start(settings, plan_layout(settings))
async_llm.create_engine_config(AsyncEngineArgs(**plan.engine_args))
if len(sys.argv) > 1:  # the first, unmeasured run: keep the engine arguments for the raw engine's runs
    open(sys.argv[1], "wb").write(pickle.dumps(plan.engine_args))
"""
    + _TO_THE_SPAWN
)

RAW_TO_SPAWN = (
    """
import json, pickle, sys, time, psutil
from vllm import AsyncEngineArgs

AsyncEngineArgs(**pickle.loads(open(sys.argv[1], "rb").read())).create_engine_config()
"""
    + _TO_THE_SPAWN
)


def _run(code: str, env: dict, *argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(runs: int, against_raw: bool) -> None:
    env = {"TENSOR_PARALLEL_SIZE": "2", "CUDA_VISIBLE_DEVICES": "", **os.environ}
    if not against_raw:
        for _ in range(runs):
            print(_run(CHILD, env))
        return
    with tempfile.TemporaryDirectory() as folder:
        args_file = os.path.join(folder, "engine_args.pickle")
        _run(WORKER_TO_SPAWN, env, args_file)  # also warms the page cache for both
        print("engine arguments:", pickle.loads(open(args_file, "rb").read()))
        times = {"raw": [], "worker": []}
        for i in range(runs):
            order = ["raw", "worker"] if i % 2 == 0 else ["worker", "raw"]
            for who in order:
                found = _run(RAW_TO_SPAWN, env, args_file) if who == "raw" else _run(WORKER_TO_SPAWN, env)
                times[who].append(found["to the spawn"])
                print(f"run {i + 1} {who}: main thread at the engine core's spawn {found['to the spawn']:.2f} s")
    raw, worker = statistics.median(times["raw"]), statistics.median(times["worker"])
    print(f"median of {runs}: raw {raw:.2f} s, worker {worker:.2f} s, the worker adds {worker - raw:+.2f} s")


if __name__ == "__main__":
    words = sys.argv[1:]
    numbers = [w for w in words if w.isdigit()]
    main(int(numbers[0]) if numbers else 3, "--against-raw" in words)
