"""The issue-target ratios of every committed bench run, one row per run.

Each results Markdown file starts with the issue-targets table; reading them side by
side shows when a ratio moved and at which commit, which is where a bisect starts
(README, "Bisecting a regression"). Only the committed ``.md`` files are read (the
JSON is not committed), so this works in any clone.

    python -m bench.history                 # every run, issue-6 targets
    python -m bench.history --full-only --issue 3/6
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

_TITLE = re.compile(r"^# splice bench — (\S+) \((quick|full)\)", re.M)
_COMMIT = re.compile(r"^- commit: `([0-9a-f]{7})[0-9a-f]*`( \(dirty tree\))?", re.M)
#: a row of the issue-targets table: issue, target, measured, ratio, verdict
_ROW = re.compile(r"^\| ([^|]+) \| ([^|]+) \| [^|]* \| ([^|]*) \| ([^|]*) \|$", re.M)


def short(target: str) -> str:
    """The first words of a target's description, enough to tell the columns apart."""
    words = re.split(r"[\s,]+", target.strip())
    return " ".join(words[:2]) if words[1:2] and words[1][:1].isalpha() else words[0]


def read_run(path: Path, issue: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """(about the run, target -> 'ratio verdict') for one results file; None if it is
    not a results file."""
    text = path.read_text(encoding="utf-8")
    title = _TITLE.search(text)
    if title is None:
        return None
    commit = _COMMIT.search(text)
    about = {
        "run": title.group(1),
        "mode": title.group(2),
        "commit": (commit.group(1) + ("*" if commit.group(2) else "")) if commit else "?",
    }
    cells = {}
    for m in _ROW.finditer(text):
        if m.group(1).strip() != issue:
            continue
        verdict = m.group(4).strip().strip("*")
        mark = {"MET": "", "NOT MET": " ✗"}.get(verdict, f" ({verdict})")
        cells[short(m.group(2))] = m.group(3).strip() + mark
    return about, cells


def table(runs: list[tuple[dict[str, str], dict[str, str]]]) -> str:
    columns: list[str] = []
    for _, cells in runs:
        columns += [c for c in cells if c not in columns]
    head = ["run", "mode", "commit", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for about, cells in runs:
        row = [about["run"], about["mode"], about["commit"]]
        row += [cells.get(c, "") for c in columns]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--issue", default="6", help="the issue column to read (6, 3/6, 8, ...)")
    ap.add_argument("--full-only", action="store_true", help="leave out quick runs")
    ap.add_argument("--dir", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    runs = []
    for path in sorted(a.dir.glob("2*.md")):
        run = read_run(path, a.issue)
        if run is None or (a.full_only and run[0]["mode"] != "full"):
            continue
        runs.append(run)
    if not runs:
        print(f"no results in {a.dir}")
        return 1
    print(f"issue {a.issue} targets per run (ratio to the reference; ✗ not met; * dirty tree)\n")
    print(table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
