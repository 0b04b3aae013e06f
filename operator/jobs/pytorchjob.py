"""kubeflow.org/v1 PyTorchJob (Kubeflow Training Operator): completion and pods as in kubeflow.py."""

from trainscope.operator.jobs import kubeflow
from trainscope.operator.jobs.base import JobKind

KIND = JobKind("kubeflow.org/v1", "PyTorchJob", "pytorchjobs", kubeflow.state, kubeflow.pods)
