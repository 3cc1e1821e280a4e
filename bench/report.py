"""Turn raw per-round figures into medians, a Markdown table and PNG plots.

Medians (not means) because rounds on a shared 2-core box have outliers; the JSON
keeps every raw figure so a reader can recompute anything.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

Results = dict[str, Any]


def summarize(raw: dict[str, list[dict[str, Any]]], keys: list[str]) -> dict[str, Any]:
    """Per target: median, min and max of each metric over the rounds that produced it."""
    out: dict[str, Any] = {"median": {}, "min": {}, "max": {}, "n": {}}
    for target, rounds in raw.items():
        for stat in ("median", "min", "max", "n"):
            out[stat][target] = {}
        for k in keys:
            vals = [r[k] for r in rounds if isinstance(r.get(k), int | float)]
            out["n"][target][k] = len(vals)
            if not vals:
                continue
            out["median"][target][k] = statistics.median(vals)
            out["min"][target][k] = min(vals)
            out["max"][target][k] = max(vals)
    return out


def _ratio(v: float | None, ref: float | None) -> str:
    if v is None or ref is None or ref == 0:
        return "—"
    return f"x{v / ref:.2f}"


def _fmt(fmt: str, v: Any) -> str:
    return "—" if v is None else fmt.format(v)


def markdown(res: Results, image_prefix: str, plot_kinds: tuple[str, ...] = ()) -> str:
    """The human summary: machine, commit, then one table per scenario."""
    meta = res["meta"]
    ref = meta["haproxy_ref"]
    lines = [
        f"# splice bench — {meta['started']} ({meta['mode']})",
        "",
        f"- commit: `{meta['git']['commit']}`{' (dirty tree)' if meta['git']['dirty'] else ''}",
        f"- machine: {meta['cpu']['model']}, {meta['cpu']['count']} CPUs, "
        f"kernel {meta['kernel']}, {meta['mem_gib']:.0f} GiB",
        f"- load average at start / end: {meta['loadavg_start']} / {meta.get('loadavg_end', '?')}",
        f"- rounds: {meta['settings']['rounds']} (held: {meta['settings']['held_rounds']}), "
        f"{meta['settings']['duration']:g} s per run; figures are medians over rounds",
        f"- cells: `value (xdirect, x{ref})`; x<1 is lower than the reference "
        "(better for latency, CPU and memory; worse for rates)",
        f"- wall time: {meta.get('elapsed_s', 0):.0f} s"
        + (" — **interrupted, partial results**" if meta.get("interrupted") else ""),
        "",
        "| target | version | TLS routing | notes |",
        "|---|---|---|---|",
    ]
    for name, t in res["targets"].items():
        note = "; ".join(([f"skipped: {t['skipped']}"] if t.get("skipped") else []) + t["notes"])
        lines.append(f"| {name} | {t['version']} | {t.get('tls_how') or '—'} | {note[:200]} |")
    for sc_name, sc in res["scenarios"].items():
        metrics = sc["metrics"]
        lines += ["", f"## {sc_name} — {sc['title']}", ""]
        if sc.get("note"):
            lines += [sc["note"], ""]
        if not metrics:
            lines.append("_not measured_")
            continue
        med = sc["summary"]["median"]
        direct = med.get("direct", {})
        href = med.get(ref, {})
        lines.append("| target | " + " | ".join(m["label"] for m in metrics) + " | errors |")
        lines.append("|---|" + "---|" * (len(metrics) + 1))
        for target, figs in med.items():
            cells = []
            for m in metrics:
                v = figs.get(m["key"])
                if v is None:
                    cells.append("—")
                    continue
                ratios = f"{_ratio(v, direct.get(m['key']))}, {_ratio(v, href.get(m['key']))}"
                cells.append(f"{_fmt(m['fmt'], v)} ({ratios})")
            errs = sum(int(r.get("errors") or 0) for r in sc["raw"].get(target, []))
            failed = [r["failed"] for r in sc["raw"].get(target, []) if r.get("failed")]
            err_cell = str(errs) + (f"; failed: {failed[0][:120]}" if failed else "")
            lines.append(f"| {target} | " + " | ".join(cells) + f" | {err_cell} |")
    if plot_kinds:
        lines += ["", "## plots", ""]
    for kind in plot_kinds:
        lines.append(f"![{kind}]({image_prefix}-{kind}.png)")
    lines += [
        "",
        "Raw per-round figures, versions and settings are in the JSON next to this file.",
        "",
    ]
    return "\n".join(lines)


def _bars(ax: Any, sc: dict[str, Any], key: str, label: str, log: bool = False) -> None:
    summ = sc["summary"]
    names = [t for t in summ["median"] if key in summ["median"][t]]
    vals = [summ["median"][t][key] for t in names]
    lo = [v - summ["min"][t][key] for t, v in zip(names, vals, strict=True)]
    hi = [summ["max"][t][key] - v for t, v in zip(names, vals, strict=True)]
    colors = [
        "#d62728" if t == "splice" else "#7f7f7f" if t == "direct" else "#1f77b4" for t in names
    ]
    ax.bar(names, vals, yerr=[lo, hi], color=colors, capsize=3)
    for i, v in enumerate(vals):
        ax.annotate(_human(v), (i, v), ha="center", va="bottom", fontsize=7)
    ax.set_title(label, fontsize=9)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.tick_params(axis="y", labelsize=7)
    if log:
        ax.set_yscale("log")


def plots(res: Results, prefix: Path) -> list[Path]:
    """throughput (bars per scenario), latency (p50/p99 per target), cost (CPU, memory)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scs = res["scenarios"]
    written: list[Path] = []

    def grid(panels: list[tuple[str, str, str]], name: str, title: str) -> None:
        panels = [p for p in panels if p[0] in scs and scs[p[0]]["summary"]["median"]]
        if not panels:
            return
        cols = min(3, len(panels))
        rows = (len(panels) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
        for ax, (sc_name, key, label) in zip(axes.flat, panels, strict=False):
            _bars(ax, scs[sc_name], key, f"{sc_name}: {label}")
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle(f"{title} — {res['meta']['started']} ({res['meta']['mode']})", fontsize=10)
        fig.tight_layout()
        path = Path(f"{prefix}-{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    grid(
        [(n, sc["throughput"], _label(sc, sc["throughput"])) for n, sc in scs.items()
         if sc.get("throughput")],
        "throughput", "throughput (median, min-max whiskers; higher is better)",
    )  # fmt: skip
    written_latency = _latency(plt, res, prefix)
    if written_latency:
        written.append(written_latency)
    cost = []
    for n, sc in scs.items():
        for m in sc["metrics"]:
            if m["key"].startswith(("cpu_", "kib_per", "fds_per")):
                cost.append((n, m["key"], m["label"]))
    grid(cost, "cost", "proxy cost from /proc (lower is better)")
    return written


def _human(v: float) -> str:
    """Short bar labels: 104k, 1.2M, 3.41, 0.753."""
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.0f}k"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.3g}"


def _label(sc: dict[str, Any], key: str) -> str:
    return next((m["label"] for m in sc["metrics"] if m["key"] == key), key)


def _latency(plt: Any, res: Results, prefix: Path) -> Path | None:
    """One panel per scenario: p50 and p99 side by side for every target (log scale)."""
    scs = {n: sc for n, sc in res["scenarios"].items() if sc.get("latency")}
    scs = {n: sc for n, sc in scs.items() if sc["summary"]["median"]}
    if not scs:
        return None
    cols = min(2, len(scs))
    rows = (len(scs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for ax in list(axes.flat)[len(scs) :]:
        ax.axis("off")
    for ax, (name, sc) in zip(axes.flat, scs.items(), strict=False):
        med = sc["summary"]["median"]
        targets = list(med)
        width = 0.8 / len(sc["latency"])
        for j, key in enumerate(sc["latency"]):
            xs = [i + j * width for i in range(len(targets))]
            ys = [med[t].get(key, 0) or 0 for t in targets]
            ax.bar(xs, ys, width, label=_label(sc, key))
            for x, y in zip(xs, ys, strict=True):
                ax.annotate(_human(y), (x, y), ha="center", va="bottom", fontsize=6)
        ax.set_xticks([i + width * (len(sc["latency"]) - 1) / 2 for i in range(len(targets))])
        ax.set_xticklabels(targets, rotation=45, fontsize=7)
        ax.set_ylabel("ms", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    title = "latency percentiles (median of rounds; lower is better)"
    fig.suptitle(f"{title} — {res['meta']['started']}", fontsize=10)
    fig.tight_layout()
    path = Path(f"{prefix}-latency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
