"""Any other job kind, through its `status.conditions`.

A custom resource that follows the Kubernetes API conventions (metav1.Condition) and reports its end with a
`Succeeded`, `Complete` or `Completed` condition, or a `Failed` one, of status True; `Suspended` and `Running` are
read too. Its pods cannot be guessed, so a logs source needs spec.selector (or logs.pods.selector).
"""

from __future__ import annotations

from typing import Any

from trainscope.collector.progress import JobState
from trainscope.operator.jobs.base import JobKind, by_conditions


def state(obj: dict[str, Any]) -> JobState:
    return by_conditions(obj, succeeded=("Succeeded", "Complete", "Completed"))


def kind(api_version: str, name: str, plural: str = "") -> JobKind:
    """An adapter for a kind found only by discovery (its plural comes from the API's resource list)."""
    return JobKind(api_version, name, plural, state, lambda _name: None)
