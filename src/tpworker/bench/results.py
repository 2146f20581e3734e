"""A phase's events -> its TP size's results: cold starts, weight memory, rounds per route and
level, then the summaries (median, min, max) and the ratios to the raw engine."""

from __future__ import annotations

from typing import Any

from tpworker.bench import metrics


def new_run() -> dict[str, Any]:
    return {"routes": {}, "cold_start": {}, "weights": {}, "cpu": {}, "errors": []}


def record(run: dict[str, Any], phase: str, event: dict[str, Any]) -> None:
    """One event of a phase into the TP size's results."""
    kind = event["event"]
    if kind == "cold":
        run["cold_start"][phase] = {
            "route": event["route"],
            "seconds": event["cold_start_s"],
            "first_token_ms": event["first_token_ms"],
        }
        if "server_cold_start_s" in event:
            run["cold_start"][phase]["server_seconds"] = event["server_cold_start_s"]
    elif kind == "weights":
        run["weights"][phase] = event["ranks"]
    elif kind == "round":
        route = run["routes"].setdefault(event["route"], {"warmup": [], "levels": {}})
        if event["warmup"]:
            route["warmup"].append(event["figures"])
        else:
            level = route["levels"].setdefault(str(event["concurrency"]), {"rounds": []})
            level["rounds"].append(event["figures"])
    elif kind == "cpu":
        run["cpu"][phase] = {"wall_s": event["wall_s"], "cores": event["cores"], "seconds": event["seconds"]}
    elif kind == "error":
        run["errors"].append({"phase": phase, "message": event["message"]})


def summarize(run: dict[str, Any]) -> None:
    """Median/min/max per route and level, each route's ratio to the raw engine (its own process),
    and the handler routes' ratio to raw-paired (the same engine, same process, interleaved)."""
    for data in run["routes"].values():
        for figures in data["levels"].values():
            figures["summary"] = metrics.summarize(figures["rounds"])

    def levels(route: str) -> dict[str, Any]:
        found: dict[str, Any] = run["routes"].get(route, {"levels": {}})["levels"]
        return found

    for name, data in run["routes"].items():
        for level, figures in data["levels"].items():
            raw, paired = levels("raw").get(level, {}), levels("raw-paired").get(level, {})
            figures["vs_raw"] = metrics.ratio_to_raw(figures["summary"], raw.get("summary")) if name != "raw" else None
            if name.startswith("handler-"):
                figures["vs_paired"] = metrics.ratio_to_raw(figures["summary"], paired.get("summary"))
