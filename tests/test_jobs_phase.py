"""How the job's state composes with the sources' run states (log text, exit codes, hosted-run states) into the
run state and phase: pure functions, every combination that matters."""

from __future__ import annotations

import pytest
from test_status import snap

from trainscope.collector.points import RunState
from trainscope.collector.progress import JobPhase, JobState, combine_with_job
from trainscope.collector.schema import SpecError
from trainscope.collector.spec import JobRef
from trainscope.operator.follow import AnnotationError, sources_from_annotations
from trainscope.operator.jobs import adapter_for
from trainscope.operator.status import phase_of

R, F, X, U = RunState.RUNNING, RunState.FINISHED, RunState.FAILED, RunState.UNKNOWN


@pytest.mark.parametrize(("job", "sources", "want"), [
    (None, F, F), (None, X, X),  # no jobRef: the sources alone, as before
    (JobPhase.RUNNING, F, R), (JobPhase.RUNNING, X, R),  # a live job outweighs a source's claim (ranks restart)
    (JobPhase.RUNNING, U, R), (JobPhase.PENDING, U, U), (JobPhase.SUSPENDED, R, R),
    (JobPhase.SUCCEEDED, U, F), (JobPhase.SUCCEEDED, R, F), (JobPhase.SUCCEEDED, X, X),  # a source saw it fail
    (JobPhase.FAILED, F, X), (JobPhase.FAILED, U, X),
    (JobPhase.DELETED, F, F), (JobPhase.DELETED, X, X), (JobPhase.DELETED, R, U),
    (JobPhase.NOT_FOUND, R, R), (JobPhase.KIND_NOT_SERVED, F, F),  # no job to judge by: the sources
])
def test_run_state_with_job(job, sources, want):
    assert combine_with_job(sources, None if job is None else JobState(job)) == want


@pytest.mark.parametrize(("job", "run", "data", "phase"), [
    (JobPhase.SUCCEEDED, F, True, "Succeeded"), (JobPhase.SUCCEEDED, F, False, "Degraded"),
    (JobPhase.FAILED, X, True, "Failed"), (JobPhase.FAILED, X, False, "Failed"),
    (JobPhase.DELETED, U, True, "Failed"), (JobPhase.DELETED, F, True, "Succeeded"),
    (JobPhase.SUSPENDED, R, True, "Suspended"), (JobPhase.PENDING, U, False, "Pending"),
    (JobPhase.NOT_FOUND, U, False, "Pending"), (JobPhase.KIND_NOT_SERVED, U, False, "Pending"),
    (JobPhase.RUNNING, R, True, "Collecting"),
])
def test_phase_with_job(job, run, data, phase):
    if not data:
        s = snap(run_state=run, job=JobState(job), step=None, latest={})
    else:
        s = snap(run_state=run, job=JobState(job), step=10)
    assert phase_of(s) == phase


@pytest.mark.parametrize(("api_version", "kind", "field"), [
    ("apps/v1", "Deployment", "spec.jobRef.kind"), ("v1", "Pod", "spec.jobRef.kind"),
    ("kubeflow.org/v2", "PyTorchJob", "spec.jobRef.apiVersion"), ("batch/v2", "Job", "spec.jobRef.apiVersion"),
    ("networking.k8s.io/v1", "Ingress", "spec.jobRef.kind"),
])
def test_unsupported_kinds_name_the_field(api_version, kind, field):
    with pytest.raises(SpecError) as err:
        adapter_for(JobRef(api_version, kind, "x"))
    assert err.value.field == field


def test_custom_kinds_go_through_their_conditions():
    k = adapter_for(JobRef("example.com/v1", "FineTune", "x"))
    assert k.pods("x") is None
    assert k.state({"status": {"conditions": [{"type": "Completed", "status": "True"}]}}).phase == JobPhase.SUCCEEDED
    assert k.state({"status": {"conditions": [{"type": "Failed", "status": "False"}]}}).phase == JobPhase.PENDING


@pytest.mark.parametrize(("annotations", "named"), [
    ({"trainscope.io/wandb-run": "team/proj"}, "trainscope.io/wandb-run"),
    ({"trainscope.io/wandb-run": "team//run1"}, "trainscope.io/wandb-run"),
    ({"trainscope.io/logs-format": "HF"}, "trainscope.io/logs-format"),
    ({"trainscope.io/tensorboard-logdir": ""}, "trainscope.io/tensorboard-logdir"),
])
def test_invalid_source_annotations_name_the_annotation(annotations, named):
    with pytest.raises(AnnotationError) as err:
        sources_from_annotations(annotations)
    assert err.value.annotation == named and named in str(err.value)


def test_source_annotations_make_sources():
    assert sources_from_annotations({"trainscope.io/wandb-run": "team/proj/abc123",
                                     "trainscope.io/logs-format": "megatron",
                                     "trainscope.io/tensorboard-logdir": "/runs/x"}) == [
        {"name": "tensorboard", "tensorboard": {"logDir": "/runs/x"}},
        {"name": "wandb", "wandb": {"entity": "team", "project": "proj", "runId": "abc123"}},
        {"name": "logs", "logs": {"pods": {}, "format": "megatron"}}]
