"""jobset.x-k8s.io/v1alpha2 JobSet.

Completion (kubernetes-sigs/jobset, api/jobset/v1alpha2/jobset_types.go): conditions `Completed` and `Failed`
(True at the end; `status.terminalState` says the same), `Suspended` while spec.suspend is set (Kueue).
Running: `status.replicatedJobsStatus[].active` (or `ready`) above zero. Pods: labelled
`jobset.sigs.k8s.io/jobset-name=<name>`.
"""

from __future__ import annotations

from typing import Any

from trainscope.collector.progress import JobPhase, JobState
from trainscope.operator.jobs.base import JobKind, active_children, by_conditions, labelled


def state(obj: dict[str, Any]) -> JobState:
    st = by_conditions(obj, succeeded=("Completed",), running=())
    active = active_children(obj, "replicatedJobsStatus")
    if st.phase == JobPhase.PENDING and active:
        return JobState(JobPhase.RUNNING, "Active", f"{active} job(s) active")
    return st


KIND = JobKind("jobset.x-k8s.io/v1alpha2", "JobSet", "jobsets", state, labelled("jobset.sigs.k8s.io/jobset-name"))
