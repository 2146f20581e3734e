"""RunPod entry point of the tpworker image.

`handler(job)` is what RunPod calls for every job; it yields the job's output chunks (formats in
the README). Run as a script, this file starts the worker: the vLLM engine once, then RunPod's job
loop, or a single local job with `--test_input '<json>'` / test_input.json (see the README). Imported
(RunPod's local tools, your own tests), the first call to `handler` starts the worker."""

import sys
from collections.abc import AsyncIterator
from typing import Any

from tpworker import app


async def handler(job: dict[str, Any]) -> AsyncIterator[Any]:
    async for chunk in app.handle(job):
        yield chunk


if __name__ == "__main__":
    sys.exit(app.main(handler, __file__))
