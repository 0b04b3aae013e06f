"""Health detectors with their defaults, on simulated time: false positives on normal runs, detection delays,
and the ETA's error at 10/50/90% of recorded runs. Run: python bench/bench_health.py
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable

from trainscope.collector.health import HealthMonitor, HealthSpec
from trainscope.collector.points import Point, RunState
from trainscope.collector.progress import StepRate, eta_seconds

T0 = 1_700_000_000.0
STEPS = 5000
EVAL_EVERY = 2.0  # seconds between evaluations, as the collector does


def decay(s: int) -> float:
    return 2.5 * math.exp(-s / 800) + 0.4


def shapes(seed: int) -> dict[str, Callable[[int], float]]:
    """Normal loss curves of different shapes (value at step s)."""
    rng = random.Random(seed)
    heavy = random.Random(seed + 1)
    return {
        "smooth, 2% noise": lambda s: decay(s) * (1 + rng.gauss(0, 0.02)),
        "noisy, 8% noise": lambda s: decay(s) * (1 + rng.gauss(0, 0.08)),
        "lr warm-up bump": lambda s: decay(s) * (1 + (0.2 * math.sin(math.pi * s / 500) if s < 500 else 0))
        * (1 + rng.gauss(0, 0.03)),
        "noisy first 100 steps": lambda s: decay(s) * (1 + rng.gauss(0, 0.4 if s < 100 else 0.03)),
        "step lr decay drops": lambda s: decay(s) * (0.7 if s > 2000 else 1) * (0.8 if s > 3500 else 1)
        * (1 + rng.gauss(0, 0.03)),
        "heavy-tailed noise": lambda s: decay(s) * (1 + 0.02 * max(-10.0, min(10.0, heavy.gauss(0, 1)
                                                                        / max(0.3, abs(heavy.gauss(0, 1)))))),
        "plateau then slow creep": lambda s: (decay(s) if s < 3000 else decay(3000) * (1 + (s - 3000) / 40000))
        * (1 + rng.gauss(0, 0.02)),
    }


def run_normal(name: str, curve: Callable[[int], float], seed: int) -> list[str]:
    """Feed a whole normal run with eval pauses and one resume, evaluating every EVAL_EVERY s; return alarms."""
    rng = random.Random(seed)
    monitor, rate = HealthMonitor(HealthSpec()), StepRate()
    alarms: list[str] = []
    t, last_eval = T0, T0
    resumed = False
    step = 1
    while step <= STEPS:
        dt = rng.uniform(0.8, 1.2) * (1.0 if "slow" not in name else 5.0)
        if step % 1000 == 0:
            dt += 240.0  # a 4-minute evaluation
        t += dt
        value = curve(step)
        monitor.observe("tb", [Point("loss", step, t, value, "r")], "loss")
        rate.observe(t, step)
        while last_eval + EVAL_EVERY <= t:
            last_eval += EVAL_EVERY
            found = monitor.evaluate(last_eval, run_state=RunState.RUNNING, step=step, step_ts=t,
                                     step_interval=rate.step_interval(), sources_ok=True)
            alarms += [f"{c.type}@{c.step}" for c in found.values() if c.status == "True"]
        if step == 3000 and not resumed:  # resumed from a checkpoint at 2800: steps re-logged
            resumed, step = True, 2800
            t += 120.0
        step += 1
    return sorted(set(alarms))


def stall_delay(step_seconds: float) -> float:
    """Simulated seconds from the last step until Stalled turns True."""
    monitor, rate = HealthMonitor(HealthSpec()), StepRate()
    t = T0
    for step in range(1, 1001):
        t += step_seconds
        rate.observe(t, step)
    now = t
    while True:
        now += EVAL_EVERY
        cond = monitor.evaluate(now, run_state=RunState.RUNNING, step=1000, step_ts=t,
                                step_interval=rate.step_interval(), sources_ok=True)["Stalled"]
        if cond.status == "True":
            return now - t


def eta_errors(seed: int) -> dict[float, float]:
    """|predicted - actual| / actual remaining time at 10/50/90% of a run with pauses and speed drift."""
    rng = random.Random(seed)
    times, t = [], T0
    speed = rng.uniform(0.5, 3.0)  # seconds per step
    for step in range(1, STEPS + 1):
        speed *= math.exp(rng.gauss(0, 0.002))  # slow drift (thermal throttling, data pipeline)
        t += speed * rng.uniform(0.9, 1.1) + (180.0 if step % 1000 == 0 else 0.0)
        times.append(t)
    out = {}
    for frac in (0.1, 0.5, 0.9):
        at = int(STEPS * frac)
        rate = StepRate()
        for step in range(1, at + 1):
            rate.observe(times[step - 1], step)
        predicted = eta_seconds(at, STEPS, rate.rate(), rate.pause_overhead())
        actual = times[-1] - times[at - 1]
        out[frac] = abs(predicted - actual) / actual
    return out


def main() -> None:
    print(f"false positives with the defaults ({STEPS} steps each, 4-min evals every 1000 steps, a resume "
          f"re-logging 200 steps):")
    total = runs = 0
    for seed in range(4):
        for name, curve in shapes(seed).items():
            alarms = run_normal(name, curve, seed)
            runs += 1
            total += bool(alarms)
            if alarms:
                print(f"  seed {seed} {name}: {alarms}")
    print(f"  {total} of {runs} normal runs raised any condition")
    print("stall detection delay (defaults: 10 x the median step interval, at least 10 min, at most 2 h):")
    for seconds in (0.5, 2.0, 30.0, 120.0, 1200.0):
        print(f"  a step every {seconds:>6g} s -> Stalled after {stall_delay(seconds):7.0f} s of no progress")
    print("NaN detection delay: the first poll that reads the value (<= pollInterval, default 30 s) plus one "
          f"evaluation (<= {EVAL_EVERY:g} s) plus one status write (<= 5 s): at most ~37 s with the defaults")
    errs = [eta_errors(seed) for seed in range(20)]
    for frac in (0.1, 0.5, 0.9):
        vals = [e[frac] for e in errs]
        print(f"ETA error at {frac:.0%} of the run: median {statistics.median(vals):.1%}, worst {max(vals):.1%} "
              f"(20 runs with 3-min pauses every 1000 steps and drifting speed)")


if __name__ == "__main__":
    main()
