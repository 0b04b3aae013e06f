"""Record SwanLab log directories with old swanlab releases (<= 0.7 wrote NaN/Inf as the strings "NaN"/"INF").

Run: python tests/data/swanlab_old/record.py [0.4.12 0.7.20 ...]
For each version: a throwaway venv under $TMPDIR with `swanlab==<version>` from PyPI, then this file's `log()` runs
in it and writes a small run (20 steps, NaN at 3, +inf at 5, -inf at 7) into tests/data/swanlab_old/<version>/.
What the venv wrote is the test data; tests/test_swanlab_old.py reads it back with the swanlab source.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = 20


def value(step: int) -> float:
    return {3: float("nan"), 5: float("inf"), 7: float("-inf")}.get(step, 1.0 / (step + 1))


def log(logdir: str) -> None:
    """Runs inside the old swanlab's venv."""
    import swanlab

    swanlab.init(project="old-encodings", experiment_name="nan-inf", logdir=logdir, mode="local",
                 config={"max_steps": STEPS})
    for step in range(STEPS):
        swanlab.log({"train/loss": value(step), "train/lr": 0.001}, step=step)
    swanlab.finish()


def record(version: str) -> None:
    out = HERE / version
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    venv = Path(tempfile.gettempdir()) / f"swanlab-{version}-venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # swanboard 0.1.7b1 (swanlab 0.4's dashboard) fails to COMMIT with peewee >= 3.17.1
        extra = ["peewee<3.17.1"] if version.startswith("0.4.") else []
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"swanlab[dashboard]=={version}", *extra],
                       check=True)
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import record; record.log({str(out)!r})"
    subprocess.run([str(venv / "bin" / "python"), "-c", code], check=True, cwd=out)
    unread = (".gitignore", "backup.swanlab")  # nor console logs and pip lists: the source reads none of them
    for junk in out.rglob("*"):  # keep the data small and committable (swanlab's own .gitignore says "*")
        if junk.is_file() and (junk.suffix == ".txt" or junk.name in unread or junk.parent.name == "console"):
            junk.unlink()


if __name__ == "__main__":
    for v in sys.argv[1:] or ["0.4.12", "0.7.20"]:
        record(v)
        print(f"recorded swanlab {v} into {HERE / v}")
