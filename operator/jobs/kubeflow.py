"""Shared by the Kubeflow Training Operator v1 kinds (PyTorchJob, MPIJob): one JobStatus for all of them.

Completion (kubeflow/training-operator, pkg/apis/kubeflow.org/v1/common_types.go, JobConditionType): conditions
Created, Running, Restarting, Succeeded, Failed and Suspended (runPolicy.suspend, used by Kueue); the job has ended
when Succeeded or Failed is True. Restarting counts as running. Pods: labelled
`training.kubeflow.org/job-name=<name>` (with replica-type and replica-index beside it).
"""

from __future__ import annotations

from typing import Any

from trainscope.collector.progress import JobState
from trainscope.operator.jobs.base import by_conditions, labelled


def state(obj: dict[str, Any]) -> JobState:
    return by_conditions(obj, succeeded=("Succeeded",), running=("Running", "Restarting"))


pods = labelled("training.kubeflow.org/job-name")
