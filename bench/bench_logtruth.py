"""Fidelity of the logs source on recorded real training runs: per run and format, the framework's own truth
entries (tests/data/logruns/, `make record-logs`) against what the parser recovers.

Run: python bench/bench_logtruth.py [--before FILE]

Columns: truth entries (what the framework recorded at the step its own loggers use), exact (recovered at that
step with the printed value), wrong step, wrong value, missing (never printed: the value as formatted is nowhere
in the output; printed: it is, and was not recovered), spurious (a point at a (metric, step) the truth does not
have), no step (HF dicts skipped because their step is unknown). Each run is read with format auto and with its
framework's named format. --before FILE: the same with an earlier logparsers.py (e.g. `git show
main:collector/sources/logparsers.py > /tmp/before.py`), format auto, for comparison. Figures are printed; the
same figures are asserted in tests/test_logs_recorded.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from trainscope.collector.sources.logformats import LineSplitter, LogParser, decode_lines

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "data" / "logruns"))
import truth

NAMED = {"hf": "hf", "lightning": "lightning", "deepspeed": "deepspeed", "loop": "deepspeed"}


def parse(parser_class: type, name: str, fmt: str) -> tuple[dict[tuple[str, int], float], object]:
    parser = parser_class(fmt)
    splitter = LineSplitter()
    out: list = []
    for blob, _ in [*splitter.feed(truth.console(name)), *splitter.flush()]:
        for line in decode_lines(blob):
            parser.feed(line, 0.0, "r", out)
    return {(p[0], p[1]): p[3] for p in out}, parser


def load() -> str:
    return f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"


def row(label: str, fmt: str, s: truth.Score, nostep: int) -> str:
    return (f"{label:<24}{fmt:<10}{s.entries:>6}{s.exact:>7}{s.wrong_step:>7}{s.wrong_value:>7}"
            f"{s.missing_never_printed:>9}{s.missing_printed:>9}{s.spurious:>7}{nostep:>8}   "
            f"{s.exact / s.entries:>6.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="", help="an earlier logparsers.py, read with format auto")
    args = ap.parse_args()
    old = None
    if args.before:
        spec = importlib.util.spec_from_file_location("logparsers_before", args.before)
        assert spec is not None and spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    print(load())
    print(f"{'run':<24}{'format':<10}{'truth':>6}{'exact':>7}{'wstep':>7}{'wvalue':>7}{'miss:np':>9}{'miss:pr':>9}"
          f"{'spur':>7}{'nostep':>8}   {'exact%':>6}")
    totals = [0, 0, 0]
    for name in truth.runs():
        family = name.split("_")[0].rstrip("45")
        for fmt in ("auto", NAMED[family]):
            got, parser = parse(LogParser, name, fmt)
            s = truth.score(name, got)
            if fmt == "auto":
                totals[0] += s.entries
                totals[1] += s.exact
                totals[2] += s.missing_never_printed
            print(row(name, fmt, s, parser.nostep))
        if old is not None:
            got, parser = parse(old.LogParser, name, "auto")
            print(row(name, "before", truth.score(name, got), 0))
    printed = totals[0] - totals[2]
    print(f"\nformat auto: {totals[1]} of {totals[0]} truth entries exact ({totals[1] / totals[0]:.1%}); of the "
          f"{printed} printed, {totals[1] / printed:.1%}; {load()}")


if __name__ == "__main__":
    main()
