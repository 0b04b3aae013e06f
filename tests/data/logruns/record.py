"""Records the real runs of runs.py: console bytes as a container runtime keeps them (a pipe, or a pty for
`tty: true`), the framework's own truth, the exit code and the exact package versions.

Run with a Python that has torch, transformers, accelerate, lightning, deepspeed, tqdm and rich (`make
record-logs`); the tests only read what this writes, so CI needs none of those packages.

Each run lands in tests/data/logruns/<name>/: console.log (raw bytes), meta.json (command, capture, exit code,
versions of the frameworks) and the truth file(s). versions.txt is the environment's `pip freeze`.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs.py"
HF4 = os.environ.get("HF4_PATH", "/work/rec-hf4")  # a --target install of transformers 4.x (optional)

# name -> list of (runs.py arguments, extra env); several entries: one console log, runs one after another
# (a run killed and resumed in the same pod or file). capture is the name's suffix.
PLAN: dict[str, list[tuple[list[str], dict[str, str]]]] = {
    "hf5_pipe": [(["hf"], {})],
    "hf5_pty": [(["hf"], {})],
    "hf5_buffered_pipe": [(["hf"], {"PYTHONUNBUFFERED": ""})],
    "hf4_pipe": [(["hf"], {"PYTHONPATH": HF4})],
    "hf4_pty": [(["hf"], {"PYTHONPATH": HF4})],
    "hf5_crash_pipe": [(["hf", "--crash-at", "25"], {})],
    "hf5_resume_pipe": [(["hf", "--steps", "60", "--save-steps", "30", "--kill-at", "55"], {}),
                        (["hf", "--steps", "60", "--save-steps", "30", "--resume"], {})],
    "lightning_tqdm_pipe": [(["lightning", "--bar", "tqdm"], {})],
    "lightning_tqdm_pty": [(["lightning", "--bar", "tqdm"], {})],
    "lightning_rich_pipe": [(["lightning", "--bar", "rich"], {})],
    "lightning_rich_pty": [(["lightning", "--bar", "rich"], {})],
    "deepspeed_default_pipe": [(["deepspeed", "--steps", "30", "--shape", "colon"], {})],
    "deepspeed_info_pipe": [(["deepspeed", "--steps", "30", "--log-level", "info", "--shape", "pipes"], {})],
    "loop_epoch_pipe": [(["loop", "--epochs", "2", "--shape", "epoch"], {})],
}

TRUTH_FILES = ("log_history.json", "truth.json")


def capture(cmd: list[str], env: dict[str, str], cwd: str, tty: bool) -> tuple[bytes, int]:
    """Run `cmd`; (stdout and stderr as one byte stream, exit code)."""
    if not tty:
        p = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        return p.stdout, p.returncode
    master, slave = pty.openpty()
    import fcntl
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns, as a terminal
    p = subprocess.Popen(cmd, env={**env, "TERM": "xterm-256color", "COLUMNS": "120"}, cwd=cwd, stdin=slave,
                         stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return b"".join(chunks), p.wait()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "accelerate", "lightning", "deepspeed", "tqdm", "rich"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def record(name: str) -> None:
    dest = HERE / name
    tty = name.endswith("_pty")
    work = tempfile.mkdtemp(prefix=f"logrun-{name}-")
    console = b""
    codes = []
    cmds = []
    try:
        for i, (args, extra) in enumerate(PLAN[name]):
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS", "TERM")}
            env.setdefault("PYTHONUNBUFFERED", "1")
            env.update(extra)
            env = {k: v for k, v in env.items() if v != ""}
            env["TOKENIZERS_PARALLELISM"] = "false"
            env["HF_HUB_OFFLINE"] = "1"
            cmd = [sys.executable, str(RUNS), *args[:1], work, *args[1:]]
            data, code = capture(cmd, env, work, tty)
            console += data
            codes.append(code)
            cmds.append({"args": args, "env": {k: v for k, v in extra.items() if v}, "exit_code": code})
            if len(PLAN[name]) > 1 and i < len(PLAN[name]) - 1:
                hist = Path(work, "log_history.json")
                if hist.exists():
                    shutil.copy(hist, Path(work, f"log_history.part{i + 1}.json"))
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        (dest / "console.log").write_bytes(console)
        for f in Path(work).glob("log_history*.json"):
            shutil.copy(f, dest / f.name)
        if Path(work, "truth.json").exists():
            shutil.copy(Path(work, "truth.json"), dest / "truth.json")
        csvs = sorted(Path(work).glob("csv/version_*/metrics.csv"))
        if csvs:
            shutil.copy(csvs[-1], dest / "metrics.csv")
        env_versions = versions()
        if any(c["env"].get("PYTHONPATH") == HF4 for c in cmds):
            env_versions["transformers"] = subprocess.run(
                [sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                env={**os.environ, "PYTHONPATH": HF4}, capture_output=True, text=True, cwd=work).stdout.strip()
        meta = {"capture": "pty" if tty else "pipe", "runs": cmds, "exit_code": codes[-1], "versions": env_versions}
        (dest / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"{name}: {len(console)} bytes, exit {codes}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("names", nargs="*", help="runs to record (default: all)")
    a = p.parse_args()
    for name in a.names or PLAN:
        if name.startswith("hf4") and not Path(HF4).is_dir():
            print(f"{name}: skipped, no transformers 4.x at {HF4}")
            continue
        record(name)
    # from a neutral folder: the repository's own `operator` package would shadow the standard library's
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True,
                            cwd=tempfile.gettempdir(), check=True).stdout
    assert freeze.strip(), "pip freeze printed nothing"
    if Path(HF4).is_dir():
        freeze += "# transformers 4.x for the hf4_* runs (a --target install in front of PYTHONPATH):\n"
        freeze += "".join(f"# {d.name.removesuffix('.dist-info').replace('-', '==', 1)}\n"
                          for d in sorted(Path(HF4).glob("*.dist-info")))
    (HERE / "versions.txt").write_text(freeze)


if __name__ == "__main__":
    main()
