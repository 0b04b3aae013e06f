"""The container image's Dockerfile, checked without a container engine: it parses, and what it names exists.

A small parser of the Dockerfile syntax this file uses (comments, parser directives, line continuations, exec and
shell forms, ARG substitution in FROM) and of .dockerignore's patterns; then the facts the chart and the package
rely on: multi-stage on a slim Python base, runtime dependencies only, a fixed non-root user equal to the chart's,
`trainscope` as the entrypoint, and every path it copies present in the build context.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from trainscope.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CHART_VALUES = ROOT / "deploy" / "helm" / "trainscope" / "values.yaml"
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "USER", "EXPOSE", "ENTRYPOINT", "CMD",
                "LABEL", "VOLUME", "HEALTHCHECK", "SHELL", "STOPSIGNAL", "ONBUILD"}


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of ENTRYPOINT/CMD/RUN in exec form, else None (shell form)."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base}: no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """-> (global ARG defaults, stages). Raises ValueError on what Docker would reject."""
    lines = text.splitlines()
    if lines and not re.match(r"#\s*syntax\s*=\s*\S+", lines[0]) and lines[0].startswith("# syntax"):
        raise ValueError("malformed syntax directive")
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comments inside a continuation are dropped by Docker
            continue
        if not buf:
            start = n
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        logical.append((start, buf + raw))
        buf = ""
    if buf:
        raise ValueError(f"line {start}: continuation at the end of the file")
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for n, text_line in logical:
        keyword, _, args = text_line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword not in INSTRUCTIONS:
            raise ValueError(f"line {n}: unknown instruction {keyword}")
        if not args.strip():
            raise ValueError(f"line {n}: {keyword} needs arguments")
        if keyword == "FROM":
            words = args.split()
            if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
                raise ValueError(f"line {n}: FROM <image> [AS <name>]")
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], words[0])
            stages.append(Stage(base, words[2] if len(words) == 3 else None))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"line {n}: only ARG may come before the first FROM")
            name, _, default = args.strip().partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(n, keyword, args.strip()))
    if not stages:
        raise ValueError("no FROM")
    return global_args, stages


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore excludes `path` (relative, '/'-separated): the last matching pattern wins and a
    pattern also matches everything under a matching directory."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        regex = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def dockerignore() -> list[str]:
    return [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
FINAL = STAGES[-1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_parser_rejects_what_docker_rejects():
    for bad in ("RUN echo hi\n", "FROM python:3.11-slim\nFROBNICATE x\n", "FROM a b\n", "FROM a\nRUN x \\\n",
                "FROM a\nUSER\n"):
        with pytest.raises(ValueError):
            parse_dockerfile(bad)
    args, stages = parse_dockerfile("ARG B=x:1\nFROM ${B} AS one\n# c\nRUN a \\\n  # inner\n  b\nFROM one\n")
    assert args == {"B": "x:1"} and [s.base for s in stages] == ["x:1", "one"]
    assert stages[0].instructions[0].args.split() == ["a", "b"]


def test_dockerignore_matching():
    pats = ["*", "!collector/", "**/__pycache__"]
    assert dockerignore_excludes(pats, "tests/test_x.py")
    assert not dockerignore_excludes(pats, "collector/store/store.py")
    assert dockerignore_excludes(pats, "collector/__pycache__/x.pyc")


def test_multi_stage_on_a_slim_python_base():
    assert len(STAGES) >= 2
    names = [s.name for s in STAGES]
    python = re.compile(r"python:(3\.\d+)-slim(-\w+)?")
    minimum = tuple(int(x) for x in PYPROJECT["project"]["requires-python"].removeprefix(">=").split("."))
    for stage in STAGES:
        match = python.fullmatch(stage.base)
        assert match, f"{stage.base}: not a pinned slim Python image"
        assert tuple(int(x) for x in match.group(1).split(".")) >= minimum
    assert STAGES[0].base == FINAL.base  # the build's virtualenv links to the same interpreter path
    for copy in FINAL.all("COPY"):
        source = re.search(r"--from=(\S+)", copy.args)
        assert source is None or source.group(1) in names[:-1], copy


def test_only_runtime_dependencies_are_installed():
    installs = [i.args for s in STAGES for i in s.all("RUN") if "pip install" in i.args]
    assert installs and all(re.search(r"pip install '\.\[parquet\]'(\s|$)", a) for a in installs), installs
    # the parquet extra only (pyarrow: W&B's history export); never dev or embedded, no editable install
    assert not any(" -e " in a or "dev" in a or "embedded" in a for a in installs)
    assert not FINAL.all("RUN") or all("pip" not in i.args for i in FINAL.all("RUN"))  # nothing built in the end
    assert not any(i.keyword == "ADD" for s in STAGES for i in s.instructions)


def test_non_root_user_matches_the_chart():
    user = FINAL.last("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    values = yaml.safe_load(CHART_VALUES.read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"]
    assert int(gid) == values["podSecurityContext"]["runAsGroup"]
    created = " ".join(i.args for i in FINAL.all("RUN"))
    assert f"--uid {uid}" in created and f"--gid {gid}" in created


def test_entrypoint_is_the_trainscope_console_script():
    assert FINAL.last("ENTRYPOINT").exec_form() == ["trainscope"]
    assert PYPROJECT["project"]["scripts"]["trainscope"] == "trainscope.cli:main"
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "trainscope"]
    assert script.value == "trainscope.cli:main" and callable(script.load())
    cmd = FINAL.last("CMD").exec_form()
    assert cmd and build_parser().parse_args(cmd).command == "operator"
    env = " ".join(i.args for i in FINAL.all("ENV"))
    venv = re.search(r"PATH=(\S+)/bin:\$PATH", env)
    assert venv, env
    assert any(f"python -m venv {venv.group(1)}" in i.args for i in STAGES[0].all("RUN"))
    assert any(venv.group(1) in c.args for c in FINAL.all("COPY") if "--from=" in c.args)


def test_copied_paths_exist_and_cover_the_package():
    patterns = dockerignore()
    copied: set[str] = set()
    for stage in STAGES:
        for copy in stage.all("COPY"):
            if "--from=" in copy.args:
                continue
            *sources, _dest = shlex.split(copy.args)
            for src in sources:
                path = ROOT / src
                assert path.exists(), f"line {copy.line}: COPY {src}: not in the repository"
                assert not dockerignore_excludes(patterns, src.rstrip("/")), f"{src} is excluded by .dockerignore"
                copied.add(src.rstrip("/"))
    package_dirs = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs | {"pyproject.toml", PYPROJECT["project"]["readme"]} == copied
    # Files the package build needs are in the context (migrations are package data under collector/).
    for f in [*ROOT.glob("collector/store/migrations/*.sql"), *ROOT.glob("operator/*.py")]:
        assert not dockerignore_excludes(patterns, f.relative_to(ROOT).as_posix()), f
    for f in ("tests/conftest.py", ".venv", "bench/bench_ingest.py", ".tools"):
        assert dockerignore_excludes(patterns, f), f


def test_exposed_ports_are_the_charts_defaults():
    values = yaml.safe_load(CHART_VALUES.read_text())
    exposed = {int(p) for i in FINAL.all("EXPOSE") for p in i.args.split()}
    assert exposed == {values["metrics"]["port"], values["liveness"]["port"], values["api"]["port"]}
