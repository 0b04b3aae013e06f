"""ray.io/v1 RayJob (KubeRay).

Completion (ray-project/kuberay, ray-operator/apis/ray/v1/rayjob_types.go): `status.jobDeploymentStatus` is
Initializing, Running, Complete, Failed, Suspending, Suspended, Retrying, Waiting; `status.jobStatus` is Ray's own
(PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED); `status.reason` / `status.message` explain a failure. Complete with
jobStatus SUCCEEDED is success; Complete with FAILED or STOPPED, or Failed, is failure.
Pods: the run's driver output is printed by the submitter, a batch/v1 Job named after the RayJob, whose pods
carry `job-name=<name>` (Ray forwards the workers' prints to the driver).
"""

from __future__ import annotations

from typing import Any

from trainscope.collector.progress import JobPhase, JobState
from trainscope.operator.jobs.base import JobKind, labelled


def state(obj: dict[str, Any]) -> JobState:
    st = obj.get("status") or {}
    deploy, ray = str(st.get("jobDeploymentStatus") or ""), str(st.get("jobStatus") or "")
    reason, message = str(st.get("reason") or ""), str(st.get("message") or "")
    if deploy == "Failed" or (deploy == "Complete" and ray in ("FAILED", "STOPPED")):
        return JobState(JobPhase.FAILED, reason or ray or "Failed", message)
    if deploy == "Complete":
        return JobState(JobPhase.SUCCEEDED, ray or "Complete", message)
    if deploy in ("Suspended", "Suspending"):
        return JobState(JobPhase.SUSPENDED, deploy, message)
    if deploy in ("Running", "Retrying"):
        return JobState(JobPhase.RUNNING, ray or deploy, message)
    return JobState(JobPhase.PENDING, deploy or "Pending", message)


KIND = JobKind("ray.io/v1", "RayJob", "rayjobs", state, labelled("job-name"))
