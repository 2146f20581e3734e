"""The worker front end's CPU per request: the engine driven directly, a native job, an OpenAI job.

    .venv/bin/python tools/front_end_cpu.py [rounds]

Builds the worker as handler.py does (the default model on CPU here, or MODEL_NAME), then, for each
way in, sends rounds of 8 streamed 16-token requests at once and divides this process's user + system
CPU time (getrusage: the front end, with the handler, the tokenizer threads and vLLM's client; the
engine core and ranks are other processes) by the requests sent. Each way runs three times,
interleaved; the median is printed. A one-off profile for the README's benchmark section, not a test.
"""

import asyncio
import resource
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY, SAMPLING = 8, {"max_tokens": 16, "temperature": 0, "ignore_eos": True}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(rounds: int) -> None:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from tpworker.bench.phase import start_worker

    worker, handler = start_worker({"handler": str(ROOT / "handler.py")})
    model = worker.openai.served_names[0]

    async def direct(prompt: str, request_id: str):
        params = SamplingParams(**SAMPLING, output_kind=RequestOutputKind.DELTA)
        async for _ in worker.engine.llm.generate({"prompt": prompt}, params, request_id):
            pass

    async def native(prompt: str, request_id: str):
        job = {"id": request_id, "input": {"prompt": prompt, "sampling_params": SAMPLING, "stream": True}}
        async for _ in handler(job):
            pass

    async def openai(prompt: str, request_id: str):
        body = {"model": model, "prompt": prompt, **SAMPLING, "stream": True}
        async for _ in handler({"id": request_id, "input": {"openai_route": "/v1/completions", "openai_input": body}}):
            pass

    async def measure():
        ways = {"engine directly": direct, "native job": native, "OpenAI job": openai}
        per_request = {name: [] for name in ways}
        for repeat in range(4):  # the first pass warms up (and builds the OpenAI serving layer)
            for name, send in ways.items():
                before = cpu_seconds()
                for r in range(rounds):
                    await asyncio.gather(
                        *(
                            send(f"Request {r}-{i}: tell me about the sea.", f"{name}-{repeat}-{r}-{i}")
                            for i in range(CONCURRENCY)
                        )
                    )
                if repeat:
                    per_request[name].append((cpu_seconds() - before) / (rounds * CONCURRENCY) * 1000)
        for name, values in per_request.items():
            print(
                f"{name}: {statistics.median(values):.2f} ms of front-end CPU per request "
                f"({', '.join(f'{v:.2f}' for v in values)})"
            )

    try:
        asyncio.run(measure())
    finally:
        worker.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
