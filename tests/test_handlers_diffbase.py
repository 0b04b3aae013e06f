"""The operator's diff base (what kopf compares to tell a spec change from our own status patches) is kopf's own
essence, built without copying the status first."""

from __future__ import annotations

import copy
import json

import kopf
import pytest

from trainscope.operator.handlers import LeanDiffBaseStorage

SPEC = {"sources": [{"name": "tb", "tensorboard": {"logDir": "/runs"}}], "totalSteps": 1000}
STATUS = {"phase": "Collecting", "step": 420, "progress": "42%", "latest": {"train/loss": {"value": 0.5, "step": 420}},
          "conditions": [{"type": "Ready", "status": "True", "reason": "Collecting", "message": "ok",
                          "lastTransitionTime": "2026-12-04T19:00:00Z"}],
          "sources": [{"name": "tb", "state": "Healthy", "points": 1234}]}


def body(**meta: object) -> dict:
    return {"apiVersion": "trainscope.io/v1alpha1", "kind": "Workload",
            "metadata": {"name": "wl", "namespace": "ns", "uid": "u1", "resourceVersion": "7", "generation": 3,
                         "finalizers": ["trainscope.io/finalizer"], **meta},
            "spec": SPEC, "status": STATUS}


@pytest.mark.parametrize("meta", [
    {},
    {"labels": {"team": "nlp"}},
    {"labels": {"team": "nlp"}, "annotations": {
        "trainscope.io/last-handled-configuration": json.dumps({"spec": SPEC}),
        "kopf.zalando.org/last-handled-configuration": "{}", "note": "kept"}},
])
def test_essence_is_kopfs_own_and_the_body_is_untouched(meta: dict) -> None:
    raw = body(**meta)
    before = copy.deepcopy(raw)
    ours = LeanDiffBaseStorage(prefix="trainscope.io").build(body=kopf.Body(raw))
    theirs = kopf.AnnotationsDiffBaseStorage(prefix="trainscope.io").build(body=kopf.Body(raw))
    assert ours == theirs and "status" not in ours and ours["spec"] == SPEC
    assert raw == before
    ours["spec"]["totalSteps"] = 1  # a deep copy: changing the essence changes nothing of the body
    assert raw["spec"]["totalSteps"] == 1000


def test_fields_asked_for_from_the_status_still_come() -> None:
    raw = body()
    ours = LeanDiffBaseStorage(prefix="trainscope.io").build(body=kopf.Body(raw), extra_fields=["status.phase"])
    assert ours["status"] == {"phase": "Collecting"}
