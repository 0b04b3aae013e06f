"""User-written regexes (a log source's `patterns`, Katib's `metricsFormat`), compiled with RE2.

RE2 matches in time linear in the line's length whatever the pattern, so no pattern a user writes can hold a
collector, or the whole process, on one line: Python's backtracking `re` took ~40 s for `(a+)+$` on a 30-character
line, doubling with each character. RE2 refuses what needs backtracking (back-references, lookaround, possessive
quantifiers, atomic groups); that is reported at validation, naming the field and what RE2 could not parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import re2

# RE2 would log every refused pattern to stderr through absl; the refusal is reported as a SpecError instead.
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
# Bounds RE2's compiled program (the default 8 MiB): a pattern whose automaton would need more is refused.
_OPTIONS.max_mem = 8 << 20


class UserRegexError(ValueError):
    """A user regex RE2 cannot compile, or without the groups its field needs."""


def _named(pattern: str) -> str:
    """Accept Go/PCRE named groups `(?<name>...)` as `(?P<name>...)` (RE2 builds before 2023 know only the latter)."""
    return re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", pattern)


def _why(exc: Exception) -> str:
    msg = exc.args[0] if exc.args else str(exc)
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    hint = ""
    if ("escape sequence" in msg and re.search(r"\\[1-9]", msg)) or "perl operator" in msg:
        hint = " (back-references and lookaround need backtracking, which is not supported: every pattern must " \
               "run in linear time)"
    return f"{msg}{hint}"


def compile_user(pattern: str) -> Any:
    """RE2-compile one user regex; UserRegexError says what RE2 refused. The result has `finditer`, `search`,
    `groupindex` and `groups` like a `re.Pattern`."""
    try:
        return re2.compile(_named(pattern), _OPTIONS)
    except re2.error as exc:
        raise UserRegexError(f"not a supported regex: {_why(exc)}") from None
    except UnicodeEncodeError:  # RE2 takes UTF-8: a lone surrogate cannot be encoded (nor appear in a log line)
        raise UserRegexError("not a supported regex: it holds a lone surrogate, which is not text") from None


def _compile_each(items: Iterable[str], what: str, check: Callable[[Any], str | None]) -> list[Any]:
    """Compile each regex, naming it (as `what`) in the error when RE2 refuses it or `check` finds fault."""
    out = []
    for p in items:
        try:
            rx = compile_user(p)
        except UserRegexError as e:
            raise UserRegexError(f"{what} {p!r} is {e}") from None
        problem = check(rx)
        if problem:
            raise UserRegexError(f"{what} {p!r} {problem}")
        out.append(rx)
    return out


def _pattern_groups(rx: Any) -> str | None:
    names = set(rx.groupindex) - {"step"}
    if not names or ("metric" in names and "value" not in names):
        return "needs named groups: metric and value, or one group per metric name"
    return None


def compile_patterns(patterns: Iterable[str]) -> list[Any]:
    """`logs.patterns`: named groups `metric`+`value` (+ optional `step`), or one named group per metric name
    (+ optional `step`). Raises UserRegexError naming the bad pattern."""
    return _compile_each(patterns, "pattern", _pattern_groups)


def compile_katib(formats: Iterable[str]) -> list[Any]:
    """Katib's `metricsFormat` regexes: group 1 is the metric name, group 2 its value."""
    return _compile_each(formats, "metricsFormat",
                         lambda rx: "needs two groups: the metric name, then its value" if rx.groups < 2 else None)


def check_log_regexes(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(field relative to the source block, message) for each regex of a `logs` block RE2 refuses."""
    problems: list[tuple[str, str]] = []
    for i, p in enumerate(config.get("patterns") or ()):
        if isinstance(p, str):
            try:
                compile_patterns([p])
            except UserRegexError as e:
                problems.append((f"patterns[{i}]", str(e)))
    for i, p in enumerate((config.get("filter") or {}).get("metricsFormat") or ()):
        if isinstance(p, str):
            try:
                compile_katib([p])
            except UserRegexError as e:
                problems.append((f"filter.metricsFormat[{i}]", str(e)))
    return problems
