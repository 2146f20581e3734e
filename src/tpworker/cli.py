"""The `tpworker` command line (also `python -m tpworker`)."""

from __future__ import annotations

import argparse
import json
import sys

from tpworker.config.logs import COMMAND_FORMAT, SERVICE_FORMAT, configure_logging


def _plan(args: argparse.Namespace) -> int:
    from tpworker.config.settings import load_settings
    from tpworker.planning import hardware, planner, start_time

    settings = load_settings()
    gpus = hardware.visible_gpus(settings.cuda_visible_devices)
    count = args.gpus or len(gpus) or 8
    memory = args.gpu_memory or (min(g.memory_bytes for g in gpus) / 1024**3 if gpus else 80.0)
    try:
        report = planner.build_report(
            args.model,
            gpus=count,
            nodes=args.nodes,
            gpu_memory_gib=memory,
            max_model_len=args.max_model_len,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_concurrency=args.max_concurrency,
            dtype=args.dtype,
            kv_cache_dtype=args.kv_cache_dtype,
            revision=args.revision,
            read_gb_per_s=args.read_speed or 0.5,
            read_speed_source="given" if args.read_speed else "assumed: give yours with --read-speed",
            init_timeout_s=settings.worker.runpod_init_timeout,
            init_timeout_source=start_time.timeout_source(
                settings.worker.runpod_init_timeout, "runpod_init_timeout" in settings.worker.model_fields_set
            ),
        )
    except (OSError, KeyError, ValueError) as e:
        print(f"tpworker plan: cannot read {args.model!r}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_json(), indent=2) if args.json else planner.render_text(report))
    return 0


def _download(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tpworker.config.settings import load_settings
    from tpworker.models import download, manifest

    # Default: the model beside the manifest the worker reads (MODEL_MANIFEST, /models/...).
    if args.manifest:
        manifest_file = Path(args.manifest)
    elif args.dest:
        manifest_file = Path(args.dest) / manifest.FILE_NAME
    else:
        manifest_file = Path(load_settings().worker.model_manifest)
    dest = Path(args.dest) if args.dest else manifest_file.parent
    try:
        result = download.download_model(
            # Empty values (unset build arguments) mean "not given".
            args.model,
            dest,
            revision=args.revision or None,
            tokenizer=args.tokenizer or None,
            tokenizer_revision=args.tokenizer_revision or None,
            served_name=args.served_name or None,
            manifest_file=manifest_file,
        )
    except download.DownloadError as e:
        print(f"tpworker download: {e}", file=sys.stderr)
        return 2
    print(f"Weights verified: {download.gib(result.weight_bytes)} in {result.path}")
    print(f"Valid TP sizes for this model: {', '.join(map(str, result.valid_tp_sizes))}")
    print(f"Manifest: {manifest_file} (serves {result.model} at commit {result.commit[:12]} as {result.served_name!r})")
    return 0


def _download_adapters(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tpworker.config.settings import load_settings
    from tpworker.errors import StartRefused
    from tpworker.models import adapters

    try:
        settings = load_settings()
        modules = settings.vllm_args().get("lora_modules") or []  # LORA_MODULES, read as the worker reads it
        if not modules:
            print("LORA_MODULES is empty: no adapter baked.")
            return 0
        cache = Path(args.dest) if args.dest else adapters.baked_cache(settings)
        for line in adapters.bake(settings, modules, cache):
            print(f"LoRA adapter {line}")
    except StartRefused as e:  # a bad LORA_MODULES, or an adapter the hub does not give
        print(f"tpworker download-adapters: {e}", file=sys.stderr)
        return 2
    return 0


def _dev(args: argparse.Namespace) -> int:
    import asyncio

    from tpworker.dev import server as devserver

    if args.external_worker and args.handler:
        print("tpworker dev: --handler and --external-worker exclude each other (give one).", file=sys.stderr)
        return 2
    try:
        handler = None if args.external_worker else devserver.find_handler(args.handler)
    except FileNotFoundError as e:
        print(f"tpworker dev: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(devserver.serve(args.host, args.port, handler, restart=not args.no_restart))
    except KeyboardInterrupt:
        pass
    return 0


def _bench(args: argparse.Namespace) -> int:
    from tpworker.bench import run

    return run.main(args)


def _contract(args: argparse.Namespace) -> int:
    from tpworker.contract.__main__ import main as check

    return check(["--json"] if args.json else [])


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="tpworker", description="RunPod serverless worker for vLLM with tensor parallelism."
    )
    commands = root.add_subparsers(dest="command", required=True)

    plan = commands.add_parser(
        "plan",
        help="valid TP sizes, memory per GPU and a recommendation, from the model's config.json alone",
        description="Which tensor-parallel sizes split MODEL, what each GPU holds at each, how many "
        "tokens of KV cache fit, and which size to use. No GPU or weights needed.",
    )
    plan.add_argument("model", help="a local model folder, a config.json file, or a Hugging Face repo id (online)")
    plan.add_argument(
        "--gpus", type=int, help="GPUs available, per node with --nodes (default: the visible ones, else 8)"
    )
    plan.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="nodes of --gpus GPUs each: plans TP within a node x PP across nodes, on Ray (default 1)",
    )
    plan.add_argument(
        "--gpu-memory", type=float, metavar="GiB", help="memory of each GPU (default: the visible GPUs', else 80)"
    )
    plan.add_argument(
        "--max-model-len", type=int, metavar="L", help="tokens per request (default: the model's context)"
    )
    plan.add_argument("--max-concurrency", type=int, default=30, help="requests served at once (default 30)")
    plan.add_argument("--gpu-memory-utilization", type=float, default=0.92, help="fraction vLLM may use (default 0.92)")
    plan.add_argument("--dtype", help="serving dtype (default: the checkpoint's)")
    plan.add_argument("--kv-cache-dtype", help="KV cache dtype, e.g. fp8 (default: the serving dtype)")
    plan.add_argument("--revision", help="hub revision")
    plan.add_argument(
        "--read-speed",
        type=float,
        metavar="GB/s",
        help="how fast the worker reads the weights from where they are (default 0.5, an assumption; the worker "
        "logs the speed it measures at start)",
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(run=_plan)

    fetch = commands.add_parser(
        "download",
        help="fetch a model from the Hugging Face hub for the worker (the image build runs it)",
        description="Download MODEL's config, tokenizer, chat template, generation config and weights (safetensors, "
        "else .bin; nothing else) at a pinned revision, resuming an interrupted download; verify the weights; print "
        "the tensor-parallel sizes the model allows; and write the manifest the worker reads at start. "
        "HF_TOKEN gives access to gated and private models.",
    )
    fetch.add_argument("model", help="Hugging Face repo id, e.g. meta-llama/Meta-Llama-3-8B-Instruct")
    fetch.add_argument("--revision", help="branch, tag or commit (default: the default branch; the commit is recorded)")
    fetch.add_argument("--tokenizer", help="a separate tokenizer repo id, if not the model's")
    fetch.add_argument("--tokenizer-revision", help="the tokenizer's branch, tag or commit")
    fetch.add_argument("--served-name", help="the model name clients use (default: MODEL)")
    fetch.add_argument("--dest", help="folder the model goes into a subfolder of (default: the manifest's folder)")
    fetch.add_argument(
        "--manifest",
        help="manifest file to write (default: DEST/tpworker-manifest.json, "
        "else MODEL_MANIFEST, /models/tpworker-manifest.json)",
    )
    fetch.set_defaults(run=_download)

    fetch_adapters = commands.add_parser(
        "download-adapters",
        help="fetch LORA_MODULES' adapters from the hub for the worker (the image build runs it)",
        description="Download each LoRA adapter that LORA_MODULES names by hub id into a hub cache the worker "
        "searches at start (beside MODEL_MANIFEST: /models/adapters in the image), so that it serves them offline. "
        "Folders are left as they are. HF_TOKEN gives access to private adapters.",
    )
    fetch_adapters.add_argument("--dest", help="the hub cache to fill (default: adapters/ beside MODEL_MANIFEST)")
    fetch_adapters.set_defaults(run=_download_adapters)

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
    dev.add_argument(
        "--external-worker",
        action="store_true",
        help="start no worker: print the RUNPOD_WEBHOOK_* variables for one started elsewhere (e.g. a built "
        "image run with `docker run --network host`) and queue jobs until it takes them",
    )
    dev.set_defaults(run=_dev)

    from tpworker.cluster import command as cluster

    cluster.add_commands(commands)

    bench = commands.add_parser(
        "bench",
        help="measure the same workload on the raw vLLM engine, the handler, tpworker dev (and vllm serve)",
        description="Run one workload against vLLM's AsyncLLM, the worker's handler (native and OpenAI jobs), "
        "`tpworker dev` (RunPod's job loop over HTTP) and optionally `vllm serve`, for each TP size, one engine "
        "at a time. Prints a table and writes result.json, result.md and tokens_per_s.png.",
    )
    from tpworker.bench.options import add_arguments

    add_arguments(bench)
    bench.set_defaults(run=_bench)

    contract = commands.add_parser(
        "contract",
        help="check the installed vLLM and runpod against the internals the worker uses",
        description="One line per internal of vLLM or the RunPod SDK the worker relies on: ok, or what moved "
        "and which of the worker's modules uses it. Exit status 1 when one moved.",
    )
    contract.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    contract.set_defaults(run=_contract)
    return root


def main(argv: list[str] | None = None) -> int:
    from tpworker.cluster import command as cluster

    argv, ray_args = cluster.split_ray_args(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if ray_args:
        args.ray_args = ray_args
    # Once, for every command, secrets redacted: commands that report and exit log plain lines.
    configure_logging(
        COMMAND_FORMAT if args.command in ("plan", "download", "download-adapters", "contract") else SERVICE_FORMAT
    )
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
