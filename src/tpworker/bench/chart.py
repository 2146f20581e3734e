"""tokens_per_s.png: output tokens/s against concurrency, a line per path and TP size (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tpworker.bench.options import ROUTE_ORDER
from tpworker.bench.targets import reference

COLORS = {
    "raw": "black",
    "raw-paired": "gray",
    "handler-native": "tab:blue",
    "handler-openai": "tab:cyan",
    "dev-native": "tab:orange",
    "dev-openai": "tab:red",
    "vllm-serve": "tab:green",
}
TP_STYLES = ("-", "--", ":", "-.")


def chart(result: dict[str, Any], path: Path) -> None:
    """Left: output tokens/s against concurrency, a line per path and TP size (median, min-max).
    Right: each as a fraction of its reference's (the targets' references), where the lines
    on the left would overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, rel) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    levels = sorted(
        {int(level) for run in result["runs"].values() for data in run["routes"].values() for level in data["levels"]}
    )
    for index, (tp, run) in enumerate(result["runs"].items()):
        style = TP_STYLES[index % len(TP_STYLES)]
        for route in [r for r in ROUTE_ORDER if r in run["routes"]]:
            points = sorted(
                (int(level), f) for level, f in run["routes"][route]["levels"].items() if f["summary"]["tokens_per_s"]
            )
            if not points:
                continue
            xs = [x for x, _ in points]
            figures = [f["summary"]["tokens_per_s"] for _, f in points]
            ys = [s["median"] for s in figures]
            errors = [[s["median"] - s["min"] for s in figures], [s["max"] - s["median"] for s in figures]]
            ax.errorbar(
                xs,
                ys,
                yerr=errors,
                label=f"{route}, TP={tp}",
                color=COLORS.get(route),
                linestyle=style,
                marker="o",
                markersize=4,
                capsize=3,
            )
            ratios = [(x, reference(route, f)[1].get("tokens_per_s")) for x, f in points]
            ratios = [(x, r) for x, r in ratios if r is not None]
            if ratios and route != "raw":
                rel.plot(
                    [x for x, _ in ratios],
                    [r for _, r in ratios],
                    color=COLORS.get(route),
                    linestyle=style,
                    marker="o",
                    markersize=4,
                )
    for axis in (ax, rel):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(x) for x in levels])
        axis.set_xlabel("concurrent requests")
        axis.grid(True, alpha=0.3)
    ax.set_ylabel("output tokens/s (median, min-max)")
    rel.set_ylabel("tokens/s / reference's (handler-*: raw-paired; others: raw)")
    rel.axhline(1.0, color="black", linewidth=0.8)
    ax.set_title(f"{result['model']['served_name']}: output tokens/s by path and TP size", fontsize=10)
    rel.set_title(
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"{', '.join(result['machine']['gpus']) or 'no GPU'}",
        fontsize=10,
    )
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="upper left", bbox_to_anchor=(0.995, 0.93))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
