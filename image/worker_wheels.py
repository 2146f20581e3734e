"""Print the pins of what the image's install step (builder/install-worker.sh) will add to the CPU base:
the worker's own requirements from builder/requirements.lock that image/cpu-base.lock does not already hold,
so that image/build-cpu-base.sh can fetch their wheels before any build step runs.

    python3 image/worker_wheels.py builder/requirements.lock image/cpu-base.lock
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "builder"))
from image_requirements import locked, to_add  # noqa: E402


def main(image_lock: str, base_lock: str) -> None:
    for requirement in to_add(locked(Path(image_lock)), set(locked(Path(base_lock)))):
        print(requirement)


if __name__ == "__main__":
    main(*sys.argv[1:])
