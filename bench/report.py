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
        note = "; ".join(
            ([t["about"]] if t.get("about") else [])
            + ([f"skipped: {t['skipped']}"] if t.get("skipped") else [])
            + t["notes"]
        )
        lines.append(f"| {name} | {t['version']} | {t.get('tls_how') or '—'} | {note[:240]} |")
    checks = res.get("checks") or targets_summary(res)
    if checks:
        lines += ["", "## issue targets", ""]
        lines += _checks_table(checks)
    for sc_name, sc in res["scenarios"].items():
        metrics = sc["metrics"]
        lines += ["", f"## {sc_name} — {sc['title']}", ""]
        if sc.get("note"):
            lines += [sc["note"], ""]
        if not metrics:
            lines.append("_not measured_")
            continue
        med = sc["summary"]["median"]
        refs = [r for r in ("direct", sc.get("ref") or ref) if r in med]
        lines.append("| target | " + " | ".join(m["label"] for m in metrics) + " | errors |")
        lines.append("|---|" + "---|" * (len(metrics) + 1))
        for target, figs in med.items():
            cells = []
            for m in metrics:
                v = figs.get(m["key"])
                if v is None:
                    cells.append("—")
                    continue
                shown = refs if m.get("ratio", True) else []
                ratios = ", ".join(_ratio(v, med[r].get(m["key"])) for r in shown)
                cells.append(_fmt(m["fmt"], v) + (f" ({ratios})" if ratios else ""))
            errs = sum(int(r.get("errors") or 0) for r in sc["raw"].get(target, []))
            failed = [r["failed"] for r in sc["raw"].get(target, []) if r.get("failed")]
            err_cell = str(errs) + (f"; failed: {failed[0][:120]}" if failed else "")
            lines.append(f"| {target} | " + " | ".join(cells) + f" | {err_cell} |")
    variants = _variants_table(res)
    if variants:
        lines += ["", "## splice variants (vs `splice`, same run)", "", *variants]
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


# ---------------------------------------------------------------- issue targets

#: the peers "best peer" is taken over (whichever ran)
PEERS = ("haproxy-tcp", "haproxy-http", "nginx", "caddy", "sniproxy")
#: splice targets that change one config key; compared with plain splice
VARIANTS = ("splice-first", "splice-blind", "splice-2w", "splice-admin", "splice-connect")


def _med(res: Results, sc: str, target: str, key: str) -> float | None:
    v = res["scenarios"].get(sc, {}).get("summary", {}).get("median", {}).get(target, {}).get(key)
    return v if isinstance(v, int | float) else None


def _spread(res: Results, sc: str, target: str, key: str) -> float | None:
    """(max - min) / median over the rounds: this run's own noise for that figure."""
    summ = res["scenarios"].get(sc, {}).get("summary", {})
    try:
        lo, hi, mid = (summ[s][target][key] for s in ("min", "max", "median"))
        if summ["n"][target][key] < 2:
            return None  # one round has no spread to speak of
    except KeyError:
        return None
    return (hi - lo) / mid if mid else None


def _round_ratios(res: Results, sc: str, a: str, b: str, key: str) -> str:
    """`` (rounds x0.87-1.12)``: ``a``/``b`` within each round, min to max. Adjacent runs
    share the machine's state, so this is how far the verdict's ratio could swing with
    the machine's drift; empty with fewer than two rounds."""
    raw = res["scenarios"].get(sc, {}).get("raw", {})
    ref = {r.get("round"): r.get(key) for r in raw.get(b, [])}
    ratios = []
    for r in raw.get(a, []):
        v, w = r.get(key), ref.get(r.get("round"))
        if isinstance(v, int | float) and isinstance(w, int | float) and w:
            ratios.append(v / w)
    if len(ratios) < 2:
        return ""
    return f" (rounds x{min(ratios):.2f}-{max(ratios):.2f})"


def _x(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _n(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "?" if v is None else fmt.format(v)


def _check(
    issue: str, goal: str, figures: str, ratios: str, ok: bool | None, info: bool = False
) -> dict[str, Any]:
    verdict = "info" if info else ("n/a" if ok is None else "MET" if ok else "NOT MET")
    return {"issue": issue, "goal": goal, "figures": figures, "ratio": ratios, "verdict": verdict}


def _all(*conds: bool | None) -> bool | None:
    return None if any(c is None for c in conds) else all(bool(c) for c in conds)


def _ge(v: float | None, bound: float) -> bool | None:
    return None if v is None else v >= bound


def _le(v: float | None, bound: float) -> bool | None:
    return None if v is None else v <= bound


def targets_summary(res: Results) -> list[dict[str, Any]]:
    """Each issue target: the measured figures, the ratio and MET / NOT MET (n/a: not
    measured). Issue 6's targets first, then issues 3, 4, 8, 10 and 11."""
    out: list[dict[str, Any]] = []
    scs = res["scenarios"]

    def m(sc: str, t: str, k: str) -> float | None:
        return _med(res, sc, t, k)

    def x(v: float | None) -> str:
        return "x" + _n(v, "{:.2f}")

    def ms(v: float | None) -> str:
        return _n(v, "{:,.3f}") + " ms"

    def ran(sc: str, t: str) -> bool:
        return sc in scs and t in scs[sc]["summary"]["median"]

    if "keepalive" in scs:  # the better (by req/s) of HAProxy http and nginx
        cands = [t for t in ("haproxy-http", "nginx") if m("keepalive", t, "rps") is not None]
        best = max(cands, key=lambda t: m("keepalive", t, "rps") or 0, default="haproxy-http")
        sr, sp = m("keepalive", "splice", "rps"), m("keepalive", "splice", "p99_ms")
        br, bp = m("keepalive", best, "rps"), m("keepalive", best, "p99_ms")
        r, p = _x(sr, br), _x(sp, bp)
        out.append(_check(
            "6", "keep-alive req/s >= 1.0x best of haproxy-http/nginx, p99 <= 1.1x",
            f"splice {_n(sr)} req/s, p99 {ms(sp)}; {best} {_n(br)} req/s, p99 {ms(bp)}",
            f"{x(r)} req/s{_round_ratios(res, 'keepalive', 'splice', best, 'rps')}, {x(p)} p99",
            _all(_ge(r, 1.0), _le(p, 1.1)),
        ))  # fmt: skip
    if "newconn" in scs:
        ref = "haproxy-http"
        sr, sp = m("newconn", "splice", "rps"), m("newconn", "splice", "p50_ms")
        hr, hp = m("newconn", ref, "rps"), m("newconn", ref, "p50_ms")
        r, p = _x(sr, hr), _x(sp, hp)
        out.append(_check(
            "6", "new-conn req/s >= 1.0x haproxy-http, p50 <= 1.1x",
            f"splice {_n(sr)} req/s, p50 {ms(sp)}; {ref} {_n(hr)} req/s, p50 {ms(hp)}",
            f"{x(r)} req/s{_round_ratios(res, 'newconn', 'splice', ref, 'rps')}, {x(p)} p50",
            _all(_ge(r, 1.0), _le(p, 1.1)),
        ))  # fmt: skip
    if "bulk" in scs:
        g = [t for t in PEERS if m("bulk", t, "gbps") is not None]
        c = [t for t in PEERS if m("bulk", t, "cpu_s_per_gib") is not None]
        bg = max(g, key=lambda t: m("bulk", t, "gbps") or 0, default="?")
        bc = min(c, key=lambda t: m("bulk", t, "cpu_s_per_gib") or 0, default="?")
        sg, scpu = m("bulk", "splice", "gbps"), m("bulk", "splice", "cpu_s_per_gib")
        pg, pc = m("bulk", bg, "gbps"), m("bulk", bc, "cpu_s_per_gib")
        r, q = _x(sg, pg), _x(scpu, pc)
        out.append(_check(
            "6", "bulk GB/s >= best peer, CPU s/GiB <= best peer",
            f"splice {_n(sg, '{:.2f}')} GB/s, {_n(scpu, '{:.3f}')} s/GiB; best: "
            f"{bg} {_n(pg, '{:.2f}')} GB/s, {bc} {_n(pc, '{:.3f}')} s/GiB",
            f"{x(r)} GB/s, {x(q)} CPU", _all(_ge(r, 1.0), _le(q, 1.0)),
        ))  # fmt: skip
    if "websocket" in scs:
        ref = "haproxy-tcp"
        sm, sp = m("websocket", "splice", "msgs_per_s"), m("websocket", "splice", "p99_ms")
        hm, hp = m("websocket", ref, "msgs_per_s"), m("websocket", ref, "p99_ms")
        r, p = _x(sm, hm), _x(sp, hp)
        out.append(_check(
            "6", "WebSocket msgs/s >= haproxy-tcp, p99 <= 1.1x",
            f"splice {_n(sm)} msgs/s, p99 {ms(sp)}; {ref} {_n(hm)} msgs/s, p99 {ms(hp)}",
            f"{x(r)} msgs/s{_round_ratios(res, 'websocket', 'splice', ref, 'msgs_per_s')}, "
            f"{x(p)} p99", _all(_ge(r, 1.0), _le(p, 1.1)),
        ))  # fmt: skip
    if "held" in scs:
        levels = res["meta"]["settings"].get("held_levels") or [10000]
        n = 10000 if 10000 in levels else max(levels)
        held_actual = res["meta"].get("held_actual", {})
        actual = held_actual.get(n, held_actual.get(str(n), n))
        v = m("held", "splice", f"kib_per_conn_{n}")
        really = f" (really {actual}: RLIMIT_NOFILE)" if actual != n else ""
        out.append(_check(
            "6", "held <= 2 KiB/conn at 10k",
            f"splice {_n(v, '{:.2f}')} KiB/conn @{n}{really}",
            f"{x(None if v is None else v / 2.0)} of 2 KiB", _le(v, 2.0),
        ))  # fmt: skip
    if "tls" in scs:
        sv = m("tls", "splice", "conns_per_s")
        hv, nv = m("tls", "haproxy-tcp", "conns_per_s"), m("tls", "sniproxy", "conns_per_s")
        r1, r2 = _x(sv, hv), _x(sv, nv)
        swing = _round_ratios(res, "tls", "splice", "haproxy-tcp", "conns_per_s")
        fv = m("tls", "py-floor", "conns_per_s")  # the bare Python relay, when measured
        floor = "" if fv is None else f"; py-floor {_n(fv)} = {x(_x(fv, hv))} haproxy-tcp"
        out.append(_check(
            "6", "TLS handshakes/s >= haproxy-tcp and >= sniproxy",
            f"splice {_n(sv)} conns/s; haproxy-tcp {_n(hv)}; sniproxy {_n(nv)}{floor}",
            f"{x(r1)} haproxy-tcp{swing}, {x(r2)} sniproxy", _all(_ge(r1, 1.0), _ge(r2, 1.0)),
        ))  # fmt: skip
    if "coldcache" in scs:
        t = "splice-shed"
        cold, warm = m("coldcache", t, "cold_p50_ms"), m("coldcache", t, "warm_p50_ms")
        rtt, io = m("coldcache", t, "rtt_p50_ms"), m("coldcache", t, "shed_io_warm")
        bound = None if rtt is None else rtt + 1.0
        out.append(_check(
            "3/6", "cold first request <= shed-server RTT + 1 ms (p50)",
            f"cold {ms(cold)} (p99 {ms(m('coldcache', t, 'cold_p99_ms'))}), warm {ms(warm)}, "
            f"RTT {ms(rtt)}",
            f"{x(_x(cold, bound))} of RTT+1ms", None if bound is None else _le(cold, bound),
        ))  # fmt: skip
        out.append(_check(
            "3/6", "warm adds no shed-server I/O",
            f"{_n(io)} shed-server read/write syscalls over the warm phase", "-", _le(io, 0),
        ))  # fmt: skip
    if ran("keepalive", "splice-first"):
        a, b = m("keepalive", "splice", "rps"), m("keepalive", "splice-first", "rps")
        pa, pb = m("keepalive", "splice", "p99_ms"), m("keepalive", "splice-first", "p99_ms")
        r = _x(a, b)
        out.append(_check(
            "4", "per-request routing within 10% of first-request routing (keep-alive req/s)",
            f"splice {_n(a)} req/s, p99 {ms(pa)}; splice-first {_n(b)} req/s, p99 {ms(pb)}",
            f"{x(r)} req/s, {x(_x(pa, pb))} p99", _ge(r, 0.9),
        ))  # fmt: skip
    if ran("keepalive", "splice-admin"):
        a, b = m("keepalive", "splice", "rps"), m("keepalive", "splice-admin", "rps")
        r = _x(b, a)
        spreads = [_spread(res, "keepalive", t, "rps") for t in ("splice", "splice-admin")]
        noise = max((v for v in spreads if v is not None), default=None)
        # "noise": this run's own round-to-round spread of either target (at least 2 %)
        ok = None if r is None or noise is None else abs(r - 1) <= max(noise, 0.02)
        band = "?" if noise is None else f"{noise * 100:.1f} %"
        out.append(_check(
            "8", "admin listener on + /metrics scraped 1/s: keep-alive req/s within noise",
            f"splice {_n(a)} req/s; splice-admin {_n(b)} req/s; round spread {band}",
            f"x{_n(r, '{:.3f}')} req/s", ok,
        ))  # fmt: skip
    for sc_name in ("keepalive", "newconn"):
        for var, issue in (("splice-2w", "8"), ("splice-connect", "3")):
            if ran(sc_name, var):
                a, b = m(sc_name, "splice", "rps"), m(sc_name, var, "rps")
                pa, pb = m(sc_name, "splice", "p99_ms"), m(sc_name, var, "p99_ms")
                out.append(_check(
                    issue, f"{var} vs splice: {sc_name} req/s (no target)",
                    f"splice {_n(a)} req/s, p99 {ms(pa)}; {var} {_n(b)} req/s, p99 {ms(pb)}",
                    f"{x(_x(b, a))} req/s", None, info=True,
                ))  # fmt: skip
    fwd = (("fwd-connect", "tunnels_per_s", "tunnels/s"), ("fwd-bulk", "gbps", "GB/s"),
           ("fwd-abs", "rps", "req/s"))  # fmt: skip
    for sc_name, key, unit in fwd:
        if not ran(sc_name, "splice-fwd"):
            continue
        fmt = "{:,.2f}" if key == "gbps" else "{:,.0f}"
        a, b = m(sc_name, "splice-fwd", key), m(sc_name, "tinyproxy", key)
        extra = ""
        if key == "gbps":
            ca, cb = (
                m(sc_name, "splice-fwd", "cpu_s_per_gib"),
                m(sc_name, "tinyproxy", "cpu_s_per_gib"),
            )
            extra = f"; CPU {_n(ca, '{:.3f}')} vs {_n(cb, '{:.3f}')} s/GiB ({x(_x(ca, cb))})"
        out.append(_check(
            "10", f"forward proxy vs tinyproxy: {sc_name} {unit} (no target)",
            f"splice-fwd {_n(a, fmt)}; tinyproxy {_n(b, fmt)}{extra}",
            f"{x(_x(a, b))}", None, info=True,
        ))  # fmt: skip
    out += _store_checks(res)
    return out


def _store_checks(res: Results) -> list[dict[str, Any]]:
    """Issue 11 (no numeric target): replay hits, replay bulk, the cost of recording."""
    out: list[dict[str, Any]] = []

    def m(sc: str, t: str, k: str) -> float | None:
        return _med(res, sc, t, k)

    def x(v: float | None) -> str:
        return "x" + _n(v, "{:.2f}")

    def gb(v: float | None) -> str:
        return _n(v, "{:.2f}") + " GB/s"

    def sg(v: float | None) -> str:
        return _n(v, "{:.3f}") + " s/GiB"

    sc = "replay"
    if m(sc, "splice-replay", "rps") is not None:
        r, d, f = (m(sc, t, "rps") for t in ("splice-replay", "direct", "splice-fwd"))
        rp, dp, fp = (m(sc, t, "p99_ms") for t in ("splice-replay", "direct", "splice-fwd"))
        out.append(_check(
            "11", "replay hits: keep-alive /small req/s from the store vs nginx, vs live "
            "forwarding (no target)",
            f"splice-replay {_n(r)} req/s (p99 {_n(rp, '{:.3f}')} ms, "
            f"{_n(m(sc, 'splice-replay', 'cpu_us_per_req'), '{:.1f}')} µs/req); direct {_n(d)} "
            f"(p99 {_n(dp, '{:.3f}')} ms); splice-fwd store off {_n(f)} "
            f"(p99 {_n(fp, '{:.3f}')} ms)",
            f"{x(_x(r, d))} direct, {x(_x(r, f))} splice-fwd", None, info=True,
        ))  # fmt: skip
    sc = "replay-bulk"
    if m(sc, "splice-replay", "gbps") is not None:
        r, d = m(sc, "splice-replay", "gbps"), m(sc, "direct", "gbps")
        out.append(_check(
            "11", "replay bulk: 1 GiB from the store vs nginx (no target)",
            f"splice-replay {gb(r)}, {sg(m(sc, 'splice-replay', 'cpu_s_per_gib'))}; "
            f"direct {gb(d)}",
            f"{x(_x(r, d))} GB/s", None, info=True,
        ))  # fmt: skip
    sc = "record-cost"
    if m(sc, "splice-record", "rps") is not None:
        pairs = [(m(sc, "splice-record", k), m(sc, "splice-fwd", k)) for k in
                 ("rps", "p99_ms", "cpu_us_per_req", "gbps", "cpu_s_per_gib")]  # fmt: skip
        (rr, fr), (rp, fp), (rc, fc), (rg, fg), (rs, fs) = pairs
        bulk = "" if rg is None else f"; bulk {gb(rg)} vs {gb(fg)}, {sg(rs)} vs {sg(fs)}"
        bulk_x = "" if rg is None else f", {x(_x(rg, fg))} bulk GB/s, {x(_x(rs, fs))} CPU/GiB"
        out.append(_check(
            "11", "recording cost: record mode / store off (no target)",
            f"/small keep-alive {_n(rr)} vs {_n(fr)} req/s, p99 {_n(rp, '{:.3f}')} vs "
            f"{_n(fp, '{:.3f}')} ms, {_n(rc, '{:.1f}')} vs {_n(fc, '{:.1f}')} µs/req{bulk}",
            f"{x(_x(rr, fr))} req/s, {x(_x(rc, fc))} CPU/req{bulk_x}", None, info=True,
        ))  # fmt: skip
    return out


def _checks_table(checks: list[dict[str, Any]]) -> list[str]:
    lines = ["| issue | target | measured | ratio | verdict |", "|---|---|---|---|---|"]
    for c in checks:
        v = c["verdict"]
        v = f"**{v}**" if v in ("MET", "NOT MET") else v
        lines.append(f"| {c['issue']} | {c['goal']} | {c['figures']} | {c['ratio']} | {v} |")
    return lines


def _variants_table(res: Results) -> list[str]:
    """Each splice variant's figures next to plain splice's, per scenario it ran."""
    rows = []
    for sc_name, sc in res["scenarios"].items():
        med = sc.get("summary", {}).get("median", {})
        if "splice" not in med:
            continue
        for var in VARIANTS:
            if var not in med:
                continue
            cells = []
            for m in sc["metrics"]:
                v, base = med[var].get(m["key"]), med["splice"].get(m["key"])
                if v is None:
                    continue
                cells.append(f"{m['label']} {_fmt(m['fmt'], v)} ({_ratio(v, base)})")
            spread = _spread(res, sc_name, var, sc.get("throughput") or "")
            extra = [] if spread is None else [f"spread ±{spread * 100:.1f} %"]
            auxs = [r["aux_cpu_us_per_req"] for r in sc["raw"].get(var, [])
                    if isinstance(r.get("aux_cpu_us_per_req"), int | float)]  # fmt: skip
            aux = statistics.median(auxs) if auxs else None
            if aux is not None:
                extra.append(f"fake shed-server CPU {aux:,.1f} µs/req")
            rows.append(f"| {var} | {sc_name} | " + "; ".join(cells + extra) + " |")
    if not rows:
        return []
    return [
        "Cells: `value (xsplice)`; spread = (max - min) / median of the variant's rounds.",
        "",
        "| variant | scenario | figures |",
        "|---|---|---|",
        *rows,
    ]


def _bars(ax: Any, sc: dict[str, Any], key: str, label: str, log: bool = False) -> None:
    summ = sc["summary"]
    names = [t for t in summ["median"] if key in summ["median"][t]]
    vals = [summ["median"][t][key] for t in names]
    lo = [v - summ["min"][t][key] for t, v in zip(names, vals, strict=True)]
    hi = [summ["max"][t][key] - v for t, v in zip(names, vals, strict=True)]
    colors = [
        "#d62728" if t == "splice" else "#f4a582" if t.startswith("splice")
        else "#7f7f7f" if t == "direct" else "#1f77b4" for t in names
    ]  # fmt: skip
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
    # matplotlib is the report's optional dependency (bench/README.md), not in the dev venv:
    # missing there, checked against its own types where it is installed
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

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
