"""trainer.kubeflow.org/v1alpha1 TrainJob (Kubeflow Trainer v2).

Completion (kubeflow/trainer, pkg/apis/trainer/v1alpha1/trainjob_types.go): conditions `Complete` and `Failed`
(True when the run ended), `Suspended` while spec.suspend is set; running: `status.jobsStatus[].active` above
zero. A TrainJob runs as a JobSet of the same name,
so its pods carry `jobset.sigs.k8s.io/jobset-name=<name>`.
"""

from __future__ import annotations

from typing import Any

from trainscope.collector.progress import JobPhase, JobState
from trainscope.operator.jobs.base import JobKind, active_children, by_conditions, labelled


def state(obj: dict[str, Any]) -> JobState:
    st = by_conditions(obj, succeeded=("Complete",), running=())
    active = active_children(obj, "jobsStatus")
    if st.phase == JobPhase.PENDING and active:
        return JobState(JobPhase.RUNNING, "Active", f"{active} job(s) active")
    return st


KIND = JobKind("trainer.kubeflow.org/v1alpha1", "TrainJob", "trainjobs", state,
               labelled("jobset.sigs.k8s.io/jobset-name"))
