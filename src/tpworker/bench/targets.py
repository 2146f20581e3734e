"""The targets a result is checked against (the README's "Benchmark" section), each with its measured value and margin.

- handler (in process, native and OpenAI): >= 0.98 of the raw engine's tokens/s at concurrency
  8 and 32, and <= 5 ms more median time to first token (at every level, streamed runs), both
  against raw-paired (see `reference`);
- `tpworker dev` (RunPod's job loop over HTTP): >= 0.95 of raw tokens/s at concurrency 8 and 32
  (shown with the between-process spread of the same engine, see `between_processes`);
- cold start (process start -> first token) within 2 s of the raw engine's;
- tensor parallelism: each rank's weight memory at TP=n <= 0.55 x (m/n)/0.5 of TP=m's, m the
  smallest size measured (at TP=2 vs 1: <= 0.55, "memory per GPU scales linearly").
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

HANDLER_RATIO, DEV_RATIO, TTFT_ADDED_MS, COLD_START_S, WEIGHTS_SLACK = 0.98, 0.95, 5.0, 2.0, 1.1
RATIO_LEVELS = (8, 32)


class TargetRow(TypedDict):
    tp: str
    what: str
    route: str | None
    concurrency: int | None
    value: float | None
    target: float
    sense: str
    met: bool
    margin: float | None
    between_processes: NotRequired[float | None]


def _row(
    tp: str, what: str, route: str | None, level: int | None, value: float | None, target: float, higher_is_better: bool
) -> TargetRow:
    margin = None if value is None else (value - target if higher_is_better else target - value)
    return {
        "tp": tp,
        "what": what,
        "route": route,
        "concurrency": level,
        "value": value,
        "target": target,
        "sense": ">=" if higher_is_better else "<=",
        "met": margin is not None and margin >= 0,
        "margin": margin,
    }


def reference(route: str, figures: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What a route is compared with: the handler routes with raw-paired (the same engine in the
    same process, rounds interleaved: the handler's own cost, without the noise between processes
    started minutes apart), the others with the raw engine's own process."""
    paired = figures.get("vs_paired") or {}
    if route.startswith("handler-") and paired.get("tokens_per_s") is not None:
        return "raw-paired", paired
    return "raw", figures.get("vs_raw") or {}


def evaluate(result: dict[str, Any]) -> list[TargetRow]:
    rows: list[TargetRow] = []
    stream = result["workload"]["stream"]
    for tp, run in result["runs"].items():
        routes = run["routes"]
        for route, data in routes.items():
            if route == "raw":
                continue
            for level, figures in data["levels"].items():
                base, versus = reference(route, figures)
                if route.startswith(("handler-", "dev-")) and int(level) in RATIO_LEVELS:
                    target = HANDLER_RATIO if route.startswith("handler-") else DEV_RATIO
                    row = _row(tp, f"tokens/s vs {base}", route, int(level), versus.get("tokens_per_s"), target, True)
                    if base == "raw":
                        row["between_processes"] = between_processes(routes, level)
                    rows.append(row)
                if route.startswith("handler-") and stream:
                    rows.append(
                        _row(
                            tp,
                            f"TTFT added vs {base} (ms)",
                            route,
                            int(level),
                            versus.get("ttft_added_ms"),
                            TTFT_ADDED_MS,
                            False,
                        )
                    )
        cold = run["cold_start"]
        for phase in ("handler", "dev"):
            if phase in cold and "raw" in cold:
                rows.append(
                    _row(
                        tp,
                        "cold start added (s)",
                        cold[phase]["route"],
                        None,
                        cold[phase]["seconds"] - cold["raw"]["seconds"],
                        COLD_START_S,
                        False,
                    )
                )
    scaling = result.get("tp_scaling") or {}
    for row in scaling.get("sizes", []):
        if row["tp"] != scaling["base_tp"]:
            rows.append(
                _row(
                    str(row["tp"]),
                    f"weights/rank vs TP={scaling['base_tp']}",
                    None,
                    None,
                    row["ratio"],
                    row["limit"],
                    False,
                )
            )
    return rows


def between_processes(routes: dict[str, Any], level: str) -> float | None:
    """raw-paired's tokens/s over raw's at one level: the same engine driven the same way, in two
    processes started minutes apart. How far it is from 1 is how far a comparison with raw can move
    with the machine alone (a shared VM's speed drifts), and so the resolution of such a target."""
    paired = ((routes.get("raw-paired") or {}).get("levels") or {}).get(level) or {}
    return (paired.get("vs_raw") or {}).get("tokens_per_s")


def rank_bytes(rank: dict[str, Any]) -> int:
    """What the model load took on a rank (measured by the engine); the tensors' bytes if unknown."""
    size: int = rank.get("loading_bytes") or rank["tensor_bytes"]
    return size


def weights_per_rank(run: dict[str, Any]) -> int | None:
    """The largest rank's weight memory, from the raw engine (else the worker's)."""
    for phase in ("raw", "handler"):
        ranks = run["weights"].get(phase)
        if ranks:
            return max(rank_bytes(r) for r in ranks)
    return None


def tp_scaling(runs: dict[str, Any]) -> dict[str, Any] | None:
    """Each TP size's largest per-rank weight memory against the smallest TP size measured."""
    per_tp = {int(tp): weights_per_rank(run) for tp, run in runs.items()}
    measured = {tp: size for tp, size in per_tp.items() if size}
    if not measured:
        return None
    base = min(measured)
    sizes = [
        {"tp": tp, "bytes_per_rank": size, "ratio": size / measured[base], "limit": WEIGHTS_SLACK * base / tp}
        for tp, size in sorted(measured.items())
    ]
    return {"base_tp": base, "sizes": sizes}
