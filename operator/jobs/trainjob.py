"""trainer.kubeflow.org/v1alpha1 TrainJob (Kubeflow Trainer v2).

Completion (kubeflow/trainer, pkg/apis/trainer/v1alpha1/trainjob_types.go): conditions `Complete` and `Failed`
(True when the run ended), `Suspended` while spec.suspend is set. A TrainJob runs as a JobSet of the same name,
so its pods carry `jobset.sigs.k8s.io/jobset-name=<name>`.
"""

from __future__ import annotations

from typing import Any

from trainscope.collector.progress import JobState
from trainscope.operator.jobs.base import JobKind, by_conditions, labelled


def state(obj: dict[str, Any]) -> JobState:
    return by_conditions(obj, succeeded=("Complete",), running=())


KIND = JobKind("trainer.kubeflow.org/v1alpha1", "TrainJob", "trainjobs", state,
               labelled("jobset.sigs.k8s.io/jobset-name"))
