"""Run one job through the real handler and print it as it streams (`python handler.py
--test_input ...`): each chunk as it arrives, then the aggregated output RunPod would return, and
the text of each choice. Returns the exit status: 0 on success, 1 if the job failed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any


def _texts(chunks: list[Any]) -> list[str]:
    """Each choice's whole text, joined from native chunks (empty for other output shapes)."""
    texts: list[str] = []
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        for i, choice in enumerate(chunk.get("choices", [])):
            if isinstance(choice, dict) and isinstance(choice.get("tokens"), list):
                texts.extend([""] * (i + 1 - len(texts)))
                texts[i] += "".join(choice["tokens"])
    return texts


async def run_local_job(handler: Callable[[dict[str, Any]], AsyncIterator[Any]], job: dict[str, Any]) -> int:
    print(f"--- job: {json.dumps(job)}", flush=True)
    chunks: list[Any] = []
    failed = False
    async for chunk in handler(job):
        chunks.append(chunk)
        print(f"--- chunk {len(chunks)}: {json.dumps(chunk)}", flush=True)
        failed = failed or (isinstance(chunk, dict) and "error" in chunk)
    if failed:
        print(f"--- job failed: {json.dumps(chunks[-1]['error'])}", flush=True)
        return 1
    print(f"--- output: {json.dumps(chunks)}", flush=True)
    for i, text in enumerate(_texts(chunks)):
        print(f"--- text of choice {i}: {text}", flush=True)
    return 0
