"""The recorded runs' truth, and the comparison of parsed points with it (used by tests and bench/bench_logtruth.py).

Truth is what the framework itself recorded, reduced to what it printed, at the step its own loggers use:

- HF Trainer: `trainer.state.log_history` (each entry has its global `step`); transformers 5 prints floats with
  `.4g`, 4.x prints them as they are but the epoch rounded to 2 decimals; `total_flos` is never printed. A
  killed and resumed run: the resumed run's history (its first entries come from the checkpoint and were printed
  by the killed run).
- Lightning: CSVLogger's metrics.csv (global step from 0); the TQDM bar prints `.3g` (tqdm's format_num), the
  Rich bar `.3f`.
- Loops and DeepSpeed: the (step, name, value, format) the loop printed.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
Key = tuple[str, int]


def runs() -> list[str]:
    """Names of the recorded runs (directories with a console.log)."""
    return sorted(p.parent.name for p in HERE.glob("*/console.log"))


def meta(name: str) -> dict:
    return json.loads((HERE / name / "meta.json").read_text())


def console(name: str) -> bytes:
    return (HERE / name / "console.log").read_bytes()


def _tqdm_num(v: float) -> str:
    """tqdm.format_num as Lightning's TQDM bar pads it (3 significant digits, zeros up to 5 characters)."""
    f = f"{v:.3g}".replace("+0", "+").replace("-0", "-")
    n = f if len(f) < len(str(v)) else str(v)
    if "e" not in n:
        if "." not in n and len(n) < 5:
            n += "."
        n += "0" * (5 - len(n))
    return n


def truth(name: str) -> dict[Key, str]:
    """(metric, step) -> the value as the run printed it (a string; float() of it is what a parser should read)."""
    d = HERE / name
    out: dict[Key, str] = {}
    if (d / "log_history.json").exists():
        quoted = meta(name)["versions"].get("transformers", "5").split(".")[0] != "4"
        for entry in json.loads((d / "log_history.json").read_text()):
            step = entry["step"]
            for k, v in entry.items():
                if k in ("step", "total_flos"):
                    continue
                if quoted and isinstance(v, float):
                    out[k, step] = f"{v:.4g}"
                else:  # transformers 4 prints the epoch rounded to 2 decimals (ProgressCallback.on_log)
                    out[k, step] = repr(round(v, 2) if k == "epoch" else v)
    elif (d / "metrics.csv").exists():
        rich = "lightning_rich" in name
        with open(d / "metrics.csv", newline="") as f:
            for row in csv.DictReader(f):
                step = int(row["step"])
                for k, v in row.items():
                    if k in ("epoch", "step") or v == "":
                        continue
                    out[k, step] = f"{float(v):.3f}" if rich else _tqdm_num(float(v))
    elif (d / "truth.json").exists():
        for step, k, v, fmt in json.loads((d / "truth.json").read_text()):
            out[k, step] = format(v, fmt)
    return out


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@dataclass
class Score:
    """A parsed run against its truth, entry by entry."""

    entries: int = 0
    exact: int = 0
    wrong_step: int = 0
    wrong_value: int = 0
    missing_never_printed: int = 0  # the value, as formatted, is nowhere in the console output
    missing_printed: int = 0  # it is in the output, the parser did not recover it
    spurious: int = 0  # a parsed (metric, step) of a truth metric that the truth does not have
    other: int = 0  # parsed points of metrics the truth file does not record (e.g. DeepSpeed's engine lines)
    examples: dict[str, list] = field(default_factory=dict)

    def note(self, kind: str, item: object) -> None:
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(item)


def score(name: str, parsed: dict[Key, float]) -> Score:
    """Compare parsed points ((metric, step) -> value, the last one per key, as the store keeps them)."""
    want = truth(name)
    text = console(name).decode("utf-8", "replace")
    s = Score(entries=len(want))
    metrics = {m for m, _ in want}
    by_value: dict[tuple[str, float], list[int]] = {}
    for (m, step), v in parsed.items():
        by_value.setdefault((m, v), []).append(step)
    for (m, step), printed in want.items():
        expect = float(printed)
        got = parsed.get((m, step))
        if got is not None and _same(got, expect):
            s.exact += 1
        elif got is not None:
            s.wrong_value += 1
            s.note("wrong_value", (m, step, printed, got))
        elif any((m, other) not in want for other in by_value.get((m, expect), ())):
            s.wrong_step += 1
            s.note("wrong_step", (m, step, printed, by_value[(m, expect)]))
        elif printed in text:
            s.missing_printed += 1
            s.note("missing_printed", (m, step, printed))
        else:
            s.missing_never_printed += 1
    for (m, step) in parsed:
        if m not in metrics:
            s.other += 1
        elif (m, step) not in want:
            s.spurious += 1
            s.note("spurious", (m, step, parsed[(m, step)]))
    return s
