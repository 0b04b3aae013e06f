"""batch/v1 Job.

Completion (https://kubernetes.io/docs/concepts/workloads/controllers/job/#terminal-job-conditions and the
JobStatus API reference): a Job ends with a `Complete` or a `Failed` condition of status True (reason e.g.
BackoffLimitExceeded, DeadlineExceeded, PodFailurePolicy). Since 1.31 `SuccessCriteriaMet` / `FailureTarget` come
first while pods still terminate; the run is over for us only at Complete/Failed, when every pod has exited and its
last log lines are written. `spec.suspend: true` (Kueue) shows as a `Suspended` condition. Running: `status.active`
pods. Pods: the Job controller labels them `job-name=<name>` (and, since 1.27, also
`batch.kubernetes.io/job-name`; the short one is on every version).
"""

from __future__ import annotations

from typing import Any

from trainscope.collector.progress import JobPhase, JobState
from trainscope.operator.jobs.base import JobKind, by_conditions, labelled


def state(obj: dict[str, Any]) -> JobState:
    st = by_conditions(obj, succeeded=("Complete",), running=())
    if st.phase == JobPhase.PENDING and (obj.get("status") or {}).get("active"):
        return JobState(JobPhase.RUNNING, "Active", f"{obj['status']['active']} pod(s) active")
    return st


KIND = JobKind("batch/v1", "Job", "jobs", state, labelled("job-name"))
