"""trainer.kubeflow.org/v1alpha1 TrainJob (Kubeflow Trainer v2).

Completion (kubeflow/trainer, pkg/apis/trainer/v1alpha1/trainjob_types.go): conditions `Complete` and `Failed`
(True when the run ended), `Suspended` while spec.suspend is set; running: `status.jobsStatus[].active` above
zero. A TrainJob runs as a JobSet of the same name,
so its pods carry `jobset.sigs.k8s.io/jobset-name=<name>`.
"""

from __future__ import annotations

from trainscope.operator.jobs.base import JobKind, labelled, parent_of_jobs

state = parent_of_jobs("Complete", "jobsStatus")

KIND = JobKind("trainer.kubeflow.org/v1alpha1", "TrainJob", "trainjobs", state,
               labelled("jobset.sigs.k8s.io/jobset-name"))
