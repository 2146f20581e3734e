"""The worker's own start before the engine: settings, layout and plan_start, in a fresh process.

    .venv/bin/python tools/plan_phases.py [runs]

Runs the start's first steps as handler.py does (the default model with MODEL_NAME unset; TP=2 unless
TENSOR_PARALLEL_SIZE is set) in `runs` fresh processes (default 3) and prints each one's timeline: when
settings were read, vLLM imported and the engine's arguments checked, in seconds since the process began.
A one-off measurement for the README's cold-start section, not a test.
"""

import json
import os
import subprocess
import sys

CHILD = """
import json
from tpworker import timeline
from tpworker.config.settings import load_settings
from tpworker.startup.layout import plan_layout
from tpworker.startup.plan import plan_start

settings = load_settings()
timeline.mark("settings read")
plan_start(settings, plan_layout(settings))
print(json.dumps({p.phase: round(p.ends_at, 2) for p in timeline.TIMELINE.phases()}))
"""


def main(runs: int) -> None:
    env = {"TENSOR_PARALLEL_SIZE": "2", "CUDA_VISIBLE_DEVICES": "", **os.environ}
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
        print(json.loads(done.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
