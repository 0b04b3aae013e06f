"""Training-job kinds in the KMock emulator: their resources, status as each controller writes it, and the garbage
collector's cascading deletion of owned objects. Kept apart from tests/kube.py (pods, logs, Workloads).

Statuses copy each controller's documented shape (the same sources as the adapters in operator/jobs/ cite):
batch/v1 Job conditions Complete/Failed + status.active; Kubeflow JobConditionType Running/Succeeded/Failed;
Trainer TrainJob Complete/Failed; JobSet Completed/Failed; KubeRay RayJob jobDeploymentStatus + jobStatus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kmock

from kube import NAMESPACE, Cluster


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    pod_labels: str  # the label whose value is the job's name on its pods

    @property
    def path(self) -> str:
        return f"{self.api_version}/{self.plural}"


JOB = Kind("batch/v1", "Job", "jobs", "job-name")
PYTORCHJOB = Kind("kubeflow.org/v1", "PyTorchJob", "pytorchjobs", "training.kubeflow.org/job-name")
MPIJOB = Kind("kubeflow.org/v1", "MPIJob", "mpijobs", "training.kubeflow.org/job-name")
TRAINJOB = Kind("trainer.kubeflow.org/v1alpha1", "TrainJob", "trainjobs", "jobset.sigs.k8s.io/jobset-name")
JOBSET = Kind("jobset.x-k8s.io/v1alpha2", "JobSet", "jobsets", "jobset.sigs.k8s.io/jobset-name")
RAYJOB = Kind("ray.io/v1", "RayJob", "rayjobs", "job-name")
ALL = (JOB, PYTORCHJOB, MPIJOB, TRAINJOB, JOBSET, RAYJOB)


def install_crds(cluster: Cluster, *kinds: Kind) -> None:
    """Serve these kinds, as installing their CRDs does (batch/v1 Job is built in: kmock's bundle has it)."""
    for k in kinds:
        if k.api_version != "batch/v1":
            cluster.emu.resources[k.path] = kmock.ResourceInfo(
                kind=k.kind, singular=k.kind.lower(), namespaced=True,
                verbs={"list", "watch", "get", "create", "patch", "update", "delete"}, subresources={"status"})


def _cond(ctype: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": ctype, "status": "True", "reason": reason or ctype, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


def running(k: Kind) -> dict[str, Any]:
    if k is JOB:
        return {"active": 1, "ready": 1}
    if k in (PYTORCHJOB, MPIJOB):
        return {"conditions": [_cond("Created"), _cond("Running", "JobRunning", f"{k.kind} is running.")]}
    if k is RAYJOB:
        return {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    if k is JOBSET:  # no condition while running: counts per replicated job
        return {"replicatedJobsStatus": [{"name": "trainer", "ready": 2, "active": 2, "succeeded": 0, "failed": 0,
                                          "suspended": 0}]}
    return {"jobsStatus": [{"name": "node", "ready": 2, "active": 2, "succeeded": 0, "failed": 0,
                            "suspended": 0}]}  # TrainJob


def succeeded(k: Kind) -> dict[str, Any]:
    if k is JOB:
        return {"succeeded": 1, "conditions": [_cond("SuccessCriteriaMet", "CompletionsReached"),
                                               _cond("Complete", "CompletionsReached", "Reached expected number of "
                                                     "succeeded pods")]}
    if k in (PYTORCHJOB, MPIJOB):
        return {"conditions": [_cond("Created"), _cond("Succeeded", "JobSucceeded", f"{k.kind} succeeded.")]}
    if k is TRAINJOB:
        return {"conditions": [_cond("Complete", "JobsCompleted", "jobs completed")]}
    if k is JOBSET:
        return {"terminalState": "Completed", "conditions": [_cond("Completed", "AllJobsCompleted",
                                                                   "jobset completed successfully")]}
    return {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}


FAILURE = "rank 1 exited with code 137"


def failed(k: Kind) -> dict[str, Any]:
    if k is JOB:
        return {"failed": 3, "conditions": [_cond("FailureTarget", "BackoffLimitExceeded"),
                                            _cond("Failed", "BackoffLimitExceeded", f"Job has reached the specified "
                                                  f"backoff limit: {FAILURE}")]}
    if k in (PYTORCHJOB, MPIJOB):
        return {"conditions": [_cond("Created"), _cond("Failed", "JobFailed", FAILURE)]}
    if k is TRAINJOB:
        return {"conditions": [_cond("Failed", "JobsFailed", FAILURE)]}
    if k is JOBSET:
        return {"terminalState": "Failed", "conditions": [_cond("Failed", "FailedJobs", FAILURE)]}
    return {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed", "message": FAILURE}


def path(k: Kind, name: str | None = None, namespace: str = NAMESPACE) -> str:
    base = f"/apis/{k.api_version}/namespaces/{namespace}/{k.plural}"
    return base if name is None else f"{base}/{name}"


async def create_job(cluster: Cluster, k: Kind, name: str, *, annotations: dict[str, str] | None = None,
                     status: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> dict[str, Any]:
    body = {"apiVersion": k.api_version, "kind": k.kind,
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
            "spec": {}, "status": status if status is not None else running(k)}
    rsp = await cluster.emu.post(path(k, namespace=namespace), json=body)
    assert rsp.status in (200, 201), await rsp.text()
    return await rsp.json()


async def patch_job(cluster: Cluster, k: Kind, name: str, patch: dict[str, Any],
                    namespace: str = NAMESPACE) -> dict[str, Any]:
    rsp = await cluster.emu.patch(path(k, name, namespace), json=patch,
                                  headers={"Content-Type": "application/merge-patch+json"})
    assert rsp.status == 200, await rsp.text()
    return await rsp.json()


async def set_status(cluster: Cluster, k: Kind, name: str, status: dict[str, Any]) -> None:
    """The controller replaces the job's status (conditions are a list: replaced whole, as an update does)."""
    obj = await patch_job(cluster, k, name, {"status": None})
    assert "status" not in obj or not obj["status"]
    await patch_job(cluster, k, name, {"status": status})


async def delete_job(cluster: Cluster, k: Kind, name: str, namespace: str = NAMESPACE) -> None:
    """Delete the job, then what Kubernetes' garbage collector deletes in the background: every object whose
    ownerReferences name the job's uid (https://kubernetes.io/docs/concepts/architecture/garbage-collection/)."""
    rsp = await cluster.emu.get(path(k, name, namespace))
    assert rsp.status == 200, await rsp.text()
    uid = (await rsp.json())["metadata"]["uid"]
    rsp = await cluster.emu.delete(path(k, name, namespace))
    assert rsp.status == 200, await rsp.text()
    for (resource, ns, nm), obj in list(cluster.emu.objects.items()):
        if obj.deleted or ns != namespace:
            continue
        owners = (obj.raw.get("metadata") or {}).get("ownerReferences") or []
        if any(o.get("uid") == uid for o in owners):
            prefix = "/api/v1" if not resource.group else f"/apis/{resource.group}/{resource.version}"
            rsp = await cluster.emu.delete(f"{prefix}/namespaces/{ns}/{resource.plural}/{nm}")
            assert rsp.status == 200, await rsp.text()


async def add_job_pod(cluster: Cluster, k: Kind, job: str, pod: str) -> dict[str, Any]:
    """A pod of the job, labelled as the kind's controller labels its pods."""
    return await cluster.add_pod(pod, {k.pod_labels: job})
