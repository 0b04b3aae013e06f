"""jobset.x-k8s.io/v1alpha2 JobSet.

Completion (kubernetes-sigs/jobset, api/jobset/v1alpha2/jobset_types.go): conditions `Completed` and `Failed`
(True at the end; `status.terminalState` says the same), `Suspended` while spec.suspend is set (Kueue).
Running: `status.replicatedJobsStatus[].active` (or `ready`) above zero. Pods: labelled
`jobset.sigs.k8s.io/jobset-name=<name>`.
"""

from __future__ import annotations

from trainscope.operator.jobs.base import JobKind, labelled, parent_of_jobs

state = parent_of_jobs("Completed", "replicatedJobsStatus")

KIND = JobKind("jobset.x-k8s.io/v1alpha2", "JobSet", "jobsets", state, labelled("jobset.sigs.k8s.io/jobset-name"))
