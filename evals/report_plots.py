"""The report's plots as PNG bytes (matplotlib, Agg): metric bars with intervals, recall@k curves, per-category
breakdown, latency distribution, paired differences."""

from __future__ import annotations

import io
from typing import Any

__all__ = ["render_plots"]

_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def _fig_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def render_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """name -> PNG bytes: metric bars with CIs, recall@k curves, per-category breakdown, latency distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = report["configs"]
    out: dict[str, bytes] = {}
    metrics = [m for m in report["headline"] if report["metrics"][m]["group"] != "cost"]
    if metrics:
        cols = min(4, len(metrics))
        nrows = (len(metrics) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
        for ax, m in zip(axes.flat, metrics, strict=False):
            ivs = [report["results"][c][m] for c in cfgs]
            means = [iv["mean"] if iv["mean"] is not None else 0.0 for iv in ivs]
            lo = [max(0.0, mu - iv["low"]) if iv["low"] is not None else 0.0 for mu, iv in zip(means, ivs, strict=True)]
            hi = [
                max(0.0, iv["high"] - mu) if iv["high"] is not None else 0.0 for mu, iv in zip(means, ivs, strict=True)
            ]
            ax.bar(range(len(cfgs)), means, yerr=[lo, hi], capsize=4, color=_COLORS[: len(cfgs)] * 4)
            ax.set_xticks(range(len(cfgs)), cfgs, rotation=20, fontsize=8)
            ax.set_title(m, fontsize=9)
            ax.set_ylim(0, 1.05)
            for x, iv in enumerate(ivs):
                if iv["mean"] is None:
                    ax.text(x, 0.05, "no data", ha="center", fontsize=7, color="#888")
        for ax in list(axes.flat)[len(metrics) :]:
            ax.axis("off")
        fig.suptitle("mean per configuration with 95 % bootstrap intervals", fontsize=10)
        out["metrics"] = _fig_png(fig)

    ks = report["ks"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, prefix, title in (
        (axes[0], "retrieval.span_recall", "character-span recall@k"),
        (axes[1], "retrieval.recall", "chunk recall@k"),
    ):
        for i, c in enumerate(cfgs):
            ivs = [report["results"][c].get(f"{prefix}@{k}", {}) for k in ks]
            means = [iv.get("mean") if iv.get("mean") is not None else float("nan") for iv in ivs]
            low = [iv.get("low") if iv.get("low") is not None else float("nan") for iv in ivs]
            high = [iv.get("high") if iv.get("high") is not None else float("nan") for iv in ivs]
            color = _COLORS[i % len(_COLORS)]
            ax.plot(ks, means, marker="o", label=c, color=color)
            ax.fill_between(ks, low, high, alpha=0.15, color=color)
        ax.set_xlabel("k")
        ax.set_ylim(0, 1.05)
        ax.set_xticks(ks)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    out["recall_at_k"] = _fig_png(fig)

    if report["per_category"]:
        pcs = list(report["per_category"].items())
        ncat = max(len(c) for _, c in pcs)
        fig, axes = plt.subplots(1, len(pcs), figsize=(5.5 * len(pcs), 0.35 * ncat + 1.5), squeeze=False)
        for ax, (m, cats) in zip(axes.flat, pcs, strict=True):
            names = list(cats)
            height = 0.8 / max(1, len(cfgs))
            for i, c in enumerate(cfgs):
                vals = [cats[n][c]["mean"] if cats[n][c]["mean"] is not None else 0.0 for n in names]
                ax.barh(
                    [y + i * height for y in range(len(names))],
                    vals,
                    height=height,
                    label=c,
                    color=_COLORS[i % len(_COLORS)],
                )
            ax.set_yticks([y + 0.4 - height / 2 for y in range(len(names))], names, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlim(0, 1.05)
            ax.set_title(m, fontsize=9)
            ax.legend(fontsize=7)
        out["per_category"] = _fig_png(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    data = [report["latency"][c]["values"] or [0.0] for c in cfgs]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(cfgs) + 1), cfgs)
    ax.set_ylabel("seconds per question")
    ax.set_title("latency distribution", fontsize=10)
    out["latency"] = _fig_png(fig)

    if report["differences"]:
        ms = [m for m in report["headline"] if report["metrics"][m]["group"] != "cost"]
        rows = [(c, m) for c in report["differences"] for m in ms]
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
        for y, (c, m) in enumerate(rows):
            iv = report["differences"][c][m]
            if iv["mean"] is None:
                continue
            color = (
                "#55a868"
                if iv["significant"] and (iv["mean"] > 0) == report["metrics"][m]["higher_is_better"]
                else ("#c44e52" if iv["significant"] else "#4c72b0")
            )
            ax.errorbar(
                iv["mean"],
                y,
                xerr=[[iv["mean"] - iv["low"]], [iv["high"] - iv["mean"]]],
                fmt="o",
                color=color,
                capsize=3,
            )
        ax.axvline(0, color="#999", lw=1)
        ax.set_yticks(range(len(rows)), [f"{c}: {m}" for c, m in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"paired differences vs {report['reference']} (95 % CI)", fontsize=10)
        out["differences"] = _fig_png(fig)
    return out


# -- HTML ------------------------------------------------------------------------------------------------------------
