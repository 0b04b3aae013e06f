"""User regexes run on RE2: a catastrophic pattern cannot stall its Workload or any other, and what RE2 cannot run
is refused at validation, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboardX import SummaryWriter

from trainscope.collector.sources.logparsers import parse_text
from trainscope.collector.spec import SpecError, parse_spec
from trainscope.operator.runtime import Runtime, RuntimeConfig

from waiting import eventually

T0 = 1_700_000_000.0
# Exponential for a backtracking engine on a line of a's that does not end in x: Python's re needs ~2^n steps (a
# 40-character run: days). RE2 runs it in one linear pass.
HOSTILE = r"step=(?P<step>\d+) (?P<loss>[0-9.]+) (?:a+)+x$"


@pytest.mark.parametrize(("block", "field", "words"), [
    ({"patterns": [r"loss=(?P<loss>\S+)", r"(?P<metric>\w+)=(?P<value>\d+)(?=,)"]},
     "spec.sources[0].logs.patterns[1]", "lookaround"),
    ({"patterns": [r"(?P<loss>\d+) \1"]}, "spec.sources[0].logs.patterns[0]", "back-references"),
    ({"filter": {"metricsFormat": [r"(\w+)=(\d+)", r"(?<=x)(\w+)=(\d+)"]}},
     "spec.sources[0].logs.filter.metricsFormat[1]", "not a supported regex"),
    ({"patterns": [r"(?P<loss>\d++)"]}, "spec.sources[0].logs.patterns[0]", "not a supported regex"),
    ({"patterns": [r"(?P<loss>a{1,5000})"]}, "spec.sources[0].logs.patterns[0]", "repetition"),
    ({"patterns": [r"(?P<metric>\w+)"]}, "spec.sources[0].logs.patterns[0]", "needs named groups"),
])
def test_what_re2_cannot_run_is_refused_naming_the_field(block: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"sources": [{"logs": {"path": "train.log", **block}}]})
    assert err.value.field == field and words in err.value.message, err.value


def test_a_catastrophic_pattern_parses_in_one_pass() -> None:
    text = "step=1 0.5 aaax\nstep=2 0.4 " + "a" * 40 + "!\nstep=3 0.3 aax\n"
    assert list(parse_text(text, "none", patterns=[HOSTILE])) == [("loss", 0.5, 1), ("loss", 0.3, 3)]


async def test_a_hostile_regex_next_to_a_healthy_workload(database_url: str, tmp_path: Path) -> None:
    """The hostile Workload's 30- and 40-character lines (Python's re: ~40 s and days) hold nothing up: its own
    points after them arrive, and the healthy Workload keeps collecting what its job writes meanwhile."""
    log = tmp_path / "train.log"
    log.write_text("step=1 0.5 aaax\n" + "".join(f"step={s} 0.4 {'a' * n}!\n" for s, n in ((2, 30), (3, 40)))
                   + "step=4 0.3 aax\n")
    with SummaryWriter(str(tmp_path / "runs"), filename_suffix=".1") as w:
        for i in range(1, 21):
            w.add_scalar("loss", 1.0 / i, i, walltime=T0 + i)
    runtime = Runtime(RuntimeConfig(database_url=database_url, metrics_port=None, base_dir=tmp_path,
                                    backoff_base=0.02, backoff_cap=0.1))
    await runtime.start()
    try:
        await runtime.apply("hostile", "ml", "hostile", {"sources": [{"logs": {
            "path": "train.log", "format": "none", "patterns": [HOSTILE]}}], "pollInterval": "100ms"})
        await runtime.apply("healthy", "ml", "healthy", {"sources": [{"tensorboard": {"logDir": "runs"}}],
                                                         "pollInterval": "100ms"})
        await eventually(lambda: (s := runtime.snapshot("healthy")) and s.step == 20)
        hostile = await eventually(lambda: (s := runtime.snapshot("hostile")) and s.step == 4 and s)
        assert hostile.latest["loss"].value == 0.3
        with log.open("a") as f:
            f.write(f"step=5 0.2 {'a' * 60}!\nstep=6 0.1 ax\n")
        with SummaryWriter(str(tmp_path / "runs"), filename_suffix=".2") as w:
            for i in range(21, 31):
                w.add_scalar("loss", 1.0 / i, i, walltime=T0 + i)
        await eventually(lambda: runtime.snapshot("healthy").step == 30 and runtime.snapshot("hostile").step == 6)
        logs = next(h for h in runtime.snapshot("hostile").sources if h.name == "logs")
        assert logs.consecutive_failures == 0 and logs.points == 3
    finally:
        await runtime.close()
