"""The plan's Kaggle fan-out against Kaggle's limits: one GPU kernel per run, at most max_gpu_sessions at once,
weekly_gpu_hours a week, one session (time_budget_h) per kernel. `pipeline.py plan` adds it to the plan's check."""

import math

from .settings import internet_on, settings

__all__ = ["kaggle_budget"]


def kaggle_budget(plan, rows, session_h: float, log=print) -> list:
    """Print the Kaggle fan-out of `rows` (roadtop.dag.budget.plan_rows, one GPU kernel each): internet, GPU hours
    against the weekly quota, wall clock under the session cap; problems (only for a plan with a `kaggle:`
    section) as strings."""
    st = settings(plan)
    on, why = internet_on(st)
    secs = [r["seconds"] for r in rows if not math.isnan(r["seconds"])]
    slots = [0.0] * st.max_gpu_sessions
    for s in secs:  # in plan order, each kernel starts when a session frees up
        slots[slots.index(min(slots))] += s
    total, weekly = sum(secs), st.weekly_gpu_hours
    log(f"kaggle: internet {'on' if on else 'off'} ({why})")
    log(f"kaggle: {len(rows)} GPU kernels, {total / 3600:.2f} GPU h of weekly_gpu_hours {weekly:g}; "
        f"{max(slots) / 3600:.2f} h wall clock at {st.max_gpu_sessions} at once (max_gpu_sessions), then the ensemble")
    if not getattr(plan, "kaggle", None):
        return []
    problems = []
    if total > weekly * 3600:
        problems.append(f"est. {total / 3600:.2f} GPU h > kaggle.weekly_gpu_hours {weekly:g} (split the plan "
                        f"over two weeks with --runs, or drop runs)")
    long = [r["run"] for r in rows if r["seconds"] > st.session_hours * 3600]
    if long:
        problems.append(f"run(s) {', '.join(long)} alone exceed one {st.session_hours:g} h Kaggle session "
                        "(kaggle.session_hours)")
    return problems
