"""Checks every source kind's config schema goes through: structural for the CRD, fields named in errors, CEL rules.

One copy of what each source's schema tests ask of its schema, so the kinds are held to the same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import celpy
import pytest

from trainscope.collector.sources import SourceContext, SourceError
from trainscope.collector.spec import SpecError, parse_spec

# Blocks with and without exactly one of logDir / url, and whether each is allowed.
LOGDIR_OR_URL_CASES = [({"logDir": "x"}, True), ({"url": "u"}, True), ({}, False), ({"logDir": "x", "url": "u"}, False)]


def schema_nodes(schema: dict[str, Any], name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below `schema` (itself too) as (dotted name, node), `[]` marking array items."""
    yield name, schema
    for prop, sub in schema.get("properties", {}).items():
        yield from schema_nodes(sub, f"{name}.{prop}")
    if isinstance(schema.get("items"), dict):
        yield from schema_nodes(schema["items"], f"{name}[]")


def assert_structural(schema: dict[str, Any], name: str, open_object: Callable[[str], bool] = lambda name: False,
                      ) -> None:
    """Each node has a type and a description (array items aside), and objects refuse unknown fields unless
    `open_object(name)`: what the CRD needs and what `kubectl explain` shows."""
    for node_name, node in schema_nodes(schema, name):
        assert "type" in node, node_name
        if not node_name.endswith("[]"):
            assert node.get("description"), node_name
        if node["type"] == "object" and not open_object(node_name):
            assert node["additionalProperties"] is False, node_name


def assert_cel_rule(rule: str, cases: Iterable[tuple[dict[str, Any], bool]]) -> None:
    """The CEL `rule` holds for exactly the blocks of `cases` marked True (as the API server would evaluate it)."""
    env = celpy.Environment()
    program = env.program(env.compile(rule))
    for block, ok in cases:
        assert bool(program.evaluate({"self": celpy.json_to_cel(block)})) is ok, block


def assert_logdir_or_url_schema(schema: dict[str, Any], name: str) -> None:
    """A logDir-or-url kind's schema is structural, its oneOf only requires (value validation, as structural
    schemas want), and its one CEL rule agrees that exactly one of logDir or url is set."""
    assert_structural(schema, name)
    for sub in schema["oneOf"]:
        assert set(sub) == {"required"}
    (rule,) = schema["x-kubernetes-validations"]
    assert_cel_rule(rule["rule"], LOGDIR_OR_URL_CASES)


def assert_spec_error(document: dict[str, Any], schemas: dict[str, dict[str, Any]] | None, field: str,
                      words: str) -> None:
    """parse_spec refuses `document`, naming `field` and saying `words` (schemas None: every registered kind)."""
    with pytest.raises(SpecError) as err:
        parse_spec(document, schemas)
    assert err.value.field == field and words in err.value.message, str(err.value)


def assert_constructor_says_exactly_one(factory: Callable[[dict[str, Any], SourceContext], Any]) -> None:
    """The source's own constructor (no schema in front of it, as in tests and local mode) refuses a block with
    neither or both of logDir and url."""
    for block in ({}, {"logDir": "/l", "url": "http://h"}):
        with pytest.raises(SourceError, match="set exactly one of logDir or url"):
            factory(block, SourceContext())
