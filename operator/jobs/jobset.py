"""jobset.x-k8s.io/v1alpha2 JobSet.

Completion (kubernetes-sigs/jobset, api/jobset/v1alpha2/jobset_types.go): conditions `Completed` and `Failed`
(True at the end; `status.terminalState` says the same), `Suspended` while spec.suspend is set (Kueue).
Pods: labelled `jobset.sigs.k8s.io/jobset-name=<name>`.
"""

from __future__ import annotations

from typing import Any

from trainscope.collector.progress import JobState
from trainscope.operator.jobs.base import JobKind, by_conditions, labelled


def state(obj: dict[str, Any]) -> JobState:
    return by_conditions(obj, succeeded=("Completed",), running=())


KIND = JobKind("jobset.x-k8s.io/v1alpha2", "JobSet", "jobsets", state, labelled("jobset.sigs.k8s.io/jobset-name"))
