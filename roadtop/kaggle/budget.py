"""The plan's Kaggle fan-out against Kaggle's limits: GPU kernels, at most max_gpu_sessions at once, the weekly
GPU quota (Kaggle's own figure when credentials are there), one session (kaggle.session_hours) per kernel.
`pipeline.py plan` adds it to the plan's check; `kaggle run` / `push` check the quota before pushing."""

import math

from ..dag.budget import plan_rows, run_key
from ..errors import RoadtopError
from .client import KaggleCallError, Quota, connect, gpu_quota, offline_username
from .schedule import pack_runs
from .settings import internet_on, settings

__all__ = ["fan_out_hours", "gpu_seconds", "kaggle_budget", "plan_quota", "quota_problem"]


def gpu_seconds(plan) -> dict:
    """job name -> the probe's time estimate in seconds (NaN when not measured) of every training job; {} when
    the probe has not run (or measured another plan)."""
    try:
        rows, _, _ = plan_rows(plan)
    except RoadtopError:
        return {}
    secs = {r["run"]: r["seconds"] for r in rows}
    return {j.name: secs[run_key(j)] for j in plan.jobs if run_key(j) in secs}


def fan_out_hours(kernel_seconds: list, sessions: int) -> tuple:
    """(GPU hours, wall-clock hours) of GPU kernels of `kernel_seconds` each, in order, each starting when one of
    `sessions` frees up."""
    slots = [0.0] * sessions
    for s in kernel_seconds:
        slots[slots.index(min(slots))] += s
    return sum(kernel_seconds) / 3600, max(slots) / 3600


def plan_quota(st, log=print):
    """(Quota, where from): Kaggle's answer (quota_view) when credentials are there, else kaggle.weekly_gpu_hours
    (hours left unknown: the whole week assumed)."""
    if offline_username() or _has_token():
        try:
            q = gpu_quota(connect(), st, log=log)
            if q is not None:
                return q, "Kaggle's quota_view"
        except (KaggleCallError, RoadtopError) as e:
            log(f"kaggle: the weekly GPU quota could not be read ({e}); assuming kaggle.weekly_gpu_hours")
    return Quota(st.weekly_gpu_hours, st.weekly_gpu_hours), "kaggle.weekly_gpu_hours, no credentials to ask"


def _has_token() -> bool:
    """True when an access token is set up (KAGGLE_API_TOKEN or ~/.kaggle/access_token)."""
    from kagglesdk import get_access_token_from_env  # the client's own search for a token

    return bool(get_access_token_from_env()[0])


def quota_problem(needed_h: float, quota: Quota) -> str:
    """'' when `needed_h` GPU hours fit the quota left, else one line: hours needed, hours left, refresh time."""
    if needed_h <= quota.left_h:
        return ""
    return (f"the GPU kernels need est. {needed_h:.2f} GPU h, the weekly GPU quota has {quota.left_h:.2f} h left "
            f"(of {quota.total_h:g} h; it refreshes {quota.refresh_text()})")


def kaggle_budget(plan, rows, session_h: float, log=print, quota=None) -> list:
    """Print the Kaggle fan-out of `rows` (roadtop.dag.budget.plan_rows): internet, GPU hours against the weekly
    quota left, wall clock under the session cap, in packs of kaggle.gpus_per_session runs (a pack lasts as long
    as its longest run) and, for comparison, one run per kernel; problems (only for a plan with a `kaggle:`
    section) as strings."""
    st = settings(plan)
    on, why = internet_on(st)
    secs = [r["seconds"] for r in rows if not math.isnan(r["seconds"])]
    one_h, one_wall = fan_out_hours(secs, st.max_gpu_sessions)
    by_run = {r["run"]: r["seconds"] for r in rows}
    packs, too_long = pack_runs(by_run, st.gpus_per_session, st.session_hours * 3600)
    pack_secs = [max(s for s in (by_run[r] for r in p) if not math.isnan(s)) for p in packs
                 if any(not math.isnan(by_run[r]) for r in p)]
    gpu_h, wall_h = fan_out_hours(pack_secs, st.max_gpu_sessions)
    if quota is None:
        quota, source = plan_quota(st, log) if getattr(plan, "kaggle", None) else (
            Quota(st.weekly_gpu_hours, st.weekly_gpu_hours), "kaggle.weekly_gpu_hours")
    else:
        source = "given"
    log(f"kaggle: internet {'on' if on else 'off'} ({why})")
    log(f"kaggle: weekly GPU quota {quota.left_h:.2f} h left of {quota.total_h:g} ({source}; refreshes "
        f"{quota.refresh_text()})")
    at = f"at {st.max_gpu_sessions} at once (max_gpu_sessions), then the ensemble"
    if st.gpus_per_session > 1:
        log(f"kaggle: one run per kernel would be {len(rows)} GPU kernels, {one_h:.2f} GPU h; {one_wall:.2f} h "
            f"wall clock {at}")
        log(f"kaggle: {len(packs)} GPU kernel{'s' * (len(packs) != 1)} (packs of up to {st.gpus_per_session} runs, one per GPU: "
            f"gpus_per_session), {gpu_h:.2f} GPU h; {wall_h:.2f} h wall clock {at}")
    else:
        log(f"kaggle: {len(rows)} GPU kernels, {gpu_h:.2f} GPU h; {wall_h:.2f} h wall clock {at}")
    rerun = []
    if st.code_competition:  # Kaggle reruns the predict kernel on the hidden test set within the competition's limit
        secs = sum(r["predict_seconds"] for r in rows) * st.hidden_test_factor
        log(f"kaggle: the code competition's rerun predicts the test set with {len(rows)} models: est. "
            f"{secs / 3600:.2f} h (x hidden_test_factor {st.hidden_test_factor:g}) of rerun_limit_h {st.rerun_limit_h:g}")
        if not secs <= st.rerun_limit_h * 3600:
            rerun.append(f"the rerun's est. {secs / 3600:.2f} h > kaggle.rerun_limit_h {st.rerun_limit_h:g} "
                         f"(fewer members or tta_n, or ask the probe again on a faster GPU)")
    if not getattr(plan, "kaggle", None):
        return rerun
    problems = [p for p in [quota_problem(gpu_h, quota)] if p]
    return rerun + problems + [f"{p} (kaggle.session_hours)" for p in too_long]
