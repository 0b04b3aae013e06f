"""kubeflow.org/v1 MPIJob (Kubeflow Training Operator): completion and pods as in kubeflow.py; the launcher
pod prints the run's output, and it carries the same job-name label as the workers."""

from trainscope.operator.jobs import kubeflow
from trainscope.operator.jobs.base import JobKind

KIND = JobKind("kubeflow.org/v1", "MPIJob", "mpijobs", kubeflow.state, kubeflow.pods)
