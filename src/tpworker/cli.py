"""The `tpworker` command line (also `python -m tpworker`)."""

from __future__ import annotations

import argparse
import json
import sys


def _plan(args: argparse.Namespace) -> int:
    from tpworker import hardware, planner
    from tpworker.settings import load_settings

    gpus = hardware.visible_gpus(load_settings().cuda_visible_devices)
    count = args.gpus or len(gpus) or 8
    memory = args.gpu_memory or (min(g.memory_bytes for g in gpus) / 1024**3 if gpus else 80.0)
    try:
        report = planner.build_report(
            args.model,
            gpus=count,
            gpu_memory_gib=memory,
            max_model_len=args.max_model_len,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_concurrency=args.max_concurrency,
            dtype=args.dtype,
            kv_cache_dtype=args.kv_cache_dtype,
            revision=args.revision,
        )
    except (OSError, KeyError, ValueError) as e:
        print(f"tpworker plan: cannot read {args.model!r}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_json(), indent=2) if args.json else planner.render_text(report))
    return 0


def _dev(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from tpworker import devserver

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        handler = devserver.find_handler(args.handler)
    except FileNotFoundError as e:
        print(f"tpworker dev: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(devserver.serve(args.host, args.port, handler, restart=not args.no_restart))
    except KeyboardInterrupt:
        pass
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tpworker", description="RunPod serverless worker for vLLM with tensor parallelism.")
    commands = root.add_subparsers(dest="command", required=True)

    plan = commands.add_parser(
        "plan",
        help="valid TP sizes, memory per GPU and a recommendation, from the model's config.json alone",
        description="Which tensor-parallel sizes split MODEL, what each GPU holds at each, how many "
        "tokens of KV cache fit, and which size to use. No GPU or weights needed.",
    )
    plan.add_argument("model", help="a local model folder, a config.json file, or a Hugging Face repo id (online)")
    plan.add_argument("--gpus", type=int, help="GPUs available (default: the visible ones, else 8)")
    plan.add_argument("--gpu-memory", type=float, metavar="GiB", help="memory of each GPU (default: the visible GPUs', else 80)")
    plan.add_argument("--max-model-len", type=int, metavar="L", help="tokens per request (default: the model's context)")
    plan.add_argument("--max-concurrency", type=int, default=30, help="requests served at once (default 30)")
    plan.add_argument("--gpu-memory-utilization", type=float, default=0.92, help="fraction vLLM may use (default 0.92)")
    plan.add_argument("--dtype", help="serving dtype (default: the checkpoint's)")
    plan.add_argument("--kv-cache-dtype", help="KV cache dtype, e.g. fp8 (default: the serving dtype)")
    plan.add_argument("--revision", help="hub revision")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(run=_plan)

    dev = commands.add_parser(
        "dev",
        help="a local RunPod endpoint (/run, /runsync, /stream, /status, /cancel, /health, /openai/v1) "
        "with the worker behind it on RunPod's real job loop",
        description="Serve RunPod's endpoint API and the OpenAI-compatible routes on this machine, "
        "running handler.py behind them with the RunPod SDK's production job loop. The worker reads "
        "the same environment variables as on RunPod.",
    )
    dev.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    dev.add_argument("--handler", help="the worker's handler.py (default: ./handler.py, else the repository's)")
    dev.add_argument("--no-restart", action="store_true", help="do not start a new worker when it exits")
    dev.set_defaults(run=_dev)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
