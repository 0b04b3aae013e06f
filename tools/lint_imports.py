"""Run import-linter (.importlinter) over the package as Python imports it.

pyproject maps `trainscope.collector`, `trainscope.operator` and `trainscope.api` to top-level folders, which
import-linter's scanner does not follow; this lays the package out as imported (links to the real files in a
temporary folder) and runs `lint-imports` on that layout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"trainscope": "trainscope", "trainscope/collector": "collector", "trainscope/operator": "operator",
            "trainscope/api": "api"}


def lay_out(dest: Path) -> None:
    """Link every .py file of each mapped folder into `dest` under its import path."""
    for target, folder in PACKAGES.items():
        src = ROOT / folder
        for path in src.rglob("*.py"):
            rel = path.relative_to(src)
            if folder == "trainscope" or not any(p.startswith(".") for p in rel.parts):
                out = dest / target / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                if not out.exists():
                    out.symlink_to(path)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ts-lint-") as tmp:
        lay_out(Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp}
        exe = Path(sys.executable).with_name("lint-imports")
        return subprocess.call([str(exe), "--config", str(ROOT / ".importlinter"), "--no-cache"], env=env, cwd=tmp)


if __name__ == "__main__":
    sys.exit(main())
