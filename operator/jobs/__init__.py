"""Job-kind adapters: one module per kind, this registry, and the check of a `spec.jobRef`."""

from __future__ import annotations

from trainscope.collector.schema import SpecError
from trainscope.collector.spec import JobRef
from trainscope.operator.jobs import batch, generic, jobset, mpijob, pytorchjob, rayjob, trainjob
from trainscope.operator.jobs.base import JobKind

KINDS: dict[tuple[str, str], JobKind] = {
    (k.api_version, k.kind): k
    for k in (batch.KIND, pytorchjob.KIND, mpijob.KIND, trainjob.KIND, jobset.KIND, rayjob.KIND)}
# Built-in API groups hold no training jobs besides batch/v1 Job: a jobRef to a Deployment or a Pod is a mistake.
_BUILTIN = ("", "apps", "batch", "autoscaling", "policy", "extensions")


def adapter_for(ref: JobRef) -> JobKind:
    """The adapter of a jobRef's kind, or a SpecError naming the field that makes it unsupported."""
    known = KINDS.get((ref.api_version, ref.kind))
    if known is not None:
        return known
    versions = sorted(k.api_version for k in KINDS.values() if k.kind == ref.kind)
    if versions:
        raise SpecError("spec.jobRef.apiVersion", f"{ref.kind} is supported as {', '.join(versions)} "
                        f"(got {ref.api_version!r})")
    group = ref.api_version.rpartition("/")[0]
    if group in _BUILTIN or group.endswith(".k8s.io"):
        raise SpecError("spec.jobRef.kind", f"{ref.api_version} {ref.kind} is not a training job; supported: "
                        + ", ".join(f"{k.api_version} {k.kind}" for k in KINDS.values())
                        + ", or a custom resource with status.conditions")
    return generic.kind(ref.api_version, ref.kind)


def pod_selector(ref: JobRef) -> dict[str, object] | None:
    """The label selector of the job's pods, or None when its kind does not say (the generic adapter)."""
    return adapter_for(ref).pods(ref.name)
