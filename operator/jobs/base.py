"""What one job kind's adapter knows: where its objects live, how its completion reads, which pods are its pods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainscope.collector.progress import JobPhase, JobState


@dataclass(frozen=True, slots=True)
class JobKind:
    """One supported job kind. `state` reads a job object; `pods` names its pods by name (None: not known)."""

    api_version: str
    kind: str
    plural: str
    state: Callable[[dict[str, Any]], JobState]
    pods: Callable[[str], dict[str, Any] | None]

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """status.conditions by type, only those whose status is "True" (metav1.Condition / JobCondition alike)."""
    out = {}
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and str(cond.get("status")) == "True" and cond.get("type"):
            out[str(cond["type"])] = cond
    return out


def from_condition(phase: str, cond: dict[str, Any]) -> JobState:
    return JobState(phase, str(cond.get("reason") or phase), str(cond.get("message") or ""))


def by_conditions(obj: dict[str, Any], *, succeeded: tuple[str, ...], failed: tuple[str, ...] = ("Failed",),
                  suspended: tuple[str, ...] = ("Suspended",), running: tuple[str, ...] = ("Running",)) -> JobState:
    """The phase from True conditions: failed first (a job can carry both), then succeeded, suspended, running."""
    true = conditions(obj)
    for names, phase in ((failed, JobPhase.FAILED), (succeeded, JobPhase.SUCCEEDED),
                         (suspended, JobPhase.SUSPENDED), (running, JobPhase.RUNNING)):
        for name in names:
            if name in true:
                return from_condition(phase, true[name])
    return JobState(JobPhase.PENDING, "Pending", "")


def active_children(obj: dict[str, Any], key: str) -> int:
    """Sum of `active` (else `ready`) over the child-job counts in status[key] (JobSet, TrainJob)."""
    total = 0
    for item in (obj.get("status") or {}).get(key) or []:
        if isinstance(item, dict):
            total += int(item.get("active") or item.get("ready") or 0)
    return total


def parent_of_jobs(succeeded: str, children: str) -> Callable[[dict[str, Any]], JobState]:
    """The state of a kind that runs child Jobs (JobSet, TrainJob): its end from conditions (`succeeded`, Failed,
    Suspended); before that, Running while any child counted in status[children] is active."""

    def state(obj: dict[str, Any]) -> JobState:
        st = by_conditions(obj, succeeded=(succeeded,), running=())
        active = active_children(obj, children)
        if st.phase == JobPhase.PENDING and active:
            return JobState(JobPhase.RUNNING, "Active", f"{active} job(s) active")
        return st

    return state


def labelled(key: str) -> Callable[[str], dict[str, Any]]:
    """Pods found by one label whose value is the job's name."""
    return lambda name: {"matchLabels": {key: name}}
