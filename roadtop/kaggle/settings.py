"""The plan's `kaggle:` section with its defaults, and the names (slugs, titles, folders) derived from it."""

import hashlib
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..dag.stages import STAGES
from ..errors import RoadtopError
from ..paddy import COMPETITION

__all__ = ["GPUS_OF_SHAPE", "MAX_GPU_SESSIONS", "RETIRED_ACCELERATORS", "SESSION_HOURS", "WEEKLY_GPU_HOURS", "KaggleSettings", "internet_on", "kaggle_dir", "kernel_slug",
           "kernel_title", "settings", "slugify"]

MAX_GPU_SESSIONS = 2  # batch GPU sessions an account runs at once ("Maximum batch GPU session count of 2 reached")
WEEKLY_GPU_HOURS = 30.0  # Kaggle's weekly GPU quota per account (it floats around 30 h)
# "A Kaggle notebook runs for at most 12 hours" (kaggle 2.2.5 KaggleApi._DEFAULT_WAIT_TIMEOUT, 12 * 60 * 60)
SESSION_HOURS = 12.0
# GPUs a session of each machine shape has: "NvidiaTeslaT4" is "GPU T4 x2" (kaggle 2.2.5 cli.py
# Help.param_kernel_acc; a single T4 is not offered, Kaggle/kaggle-cli#1198); others one
GPUS_OF_SHAPE = {"nvidiateslat4": 2}
# Machine shapes the server silently replaces, and with what (kaggle 2.2.5 _RETIRED_ACCELERATORS; lowercase keys)
RETIRED_ACCELERATORS = {
    "nvidiateslap100": "Sessions run on the default GPU (NvidiaTeslaT4) instead.",
    "tpuv38": "Sessions run on the default TPU (TpuV5E8) instead.",
    "tpu1vmv38": "Sessions run on the default TPU (TpuV5E8) instead.",
    "tpuv232": "Sessions run on CPU instead, with no accelerator at all.",
    "tpuv2256": "Sessions run on CPU instead, with no accelerator at all.",
}


@dataclass
class KaggleSettings:
    """The plan's `kaggle:` section with its defaults; `settings()` refuses unknown keys and wrong types."""

    competition: str = COMPETITION  # competition slug: every Paddy kernel's input, and the submit target
    code_competition: bool = False  # submit the predict kernel's version (Kaggle reruns it), else a submission.csv
    # a code competition's rerun: its time limit (kagglesdk CompetitionSettings.max_gpu_runtime_minutes / 60) and
    # how many times more test images the hidden set has than the public one
    rerun_limit_h: float = 9.0
    hidden_test_factor: float = 1.0
    username: str = ""  # kernel owner; empty: the user the credentials belong to
    slug_prefix: str = ""  # kernel slugs are <prefix>-<run>; empty: roadtop-<plan name>
    # what `push` sends without --only: the ensemble's members and the ensemble
    stages: list = field(default_factory=lambda: [n for n, s in STAGES.items() if s.member or s.ensembles])
    internet: object = "auto"  # auto: on for a file competition (timm fetches weights), off for a code one
    enable_gpu: bool = True  # GPU for the stages that want one (roadtop.dag.stages: gpu=True)
    accelerator: str = "NvidiaTeslaT4"  # Kaggle machine shape of GPU kernels (a T4 shows ~15 GiB); "": Kaggle's
    max_gpu_sessions: int = MAX_GPU_SESSIONS  # GPU kernels queued/running at once (Kaggle's cap per account)
    gpus_per_session: int = 0  # GPU runs a kernel trains at once, one per card; 0: the accelerator's (2 for a T4)
    weekly_gpu_hours: float = WEEKLY_GPU_HOURS  # the weekly GPU quota assumed when Kaggle cannot be asked
    session_hours: float = SESSION_HOURS  # longest a kernel session runs; every GPU kernel is checked against it
    docker_image: str = ""  # image every kernel runs on; "": the one Kaggle gives the first kernel, then pinned
    is_private: bool = True  # kernels are private
    weights_dataset: str = ""  # owner/slug of the pretrained weights dataset (pipeline.py kaggle weights)
    datasets: list = field(default_factory=list)  # extra owner/slug datasets attached to every kernel
    timeout: int = 0  # session timeout in seconds; 0: Kaggle's own limit
    poll_interval: float = 60.0  # seconds between status polls
    retries: int = 5  # retries after a 429/5xx/no answer
    backoff: float = 2.0  # first retry delay in seconds, doubling each time (a Retry-After header wins)


def settings(plan) -> KaggleSettings:
    """KaggleSettings from `plan.kaggle`; an unknown key or a wrong type is a RoadtopError naming the plan."""
    raw = dict(getattr(plan, "kaggle", None) or {})
    known, defaults = [f.name for f in fields(KaggleSettings)], KaggleSettings()
    where = f"{getattr(plan, 'source', 'plan')}: kaggle"
    for k, v in raw.items():
        if k not in known:
            raise RoadtopError(f"{where}.{k} is unknown: use one of {', '.join(known)}")
        if k == "internet":
            if v not in ("auto", True, False):
                raise RoadtopError(f"{where}.internet={v!r} should be auto, true or false: fix it in the plan")
            continue
        want = type(getattr(defaults, k))
        ok = isinstance(v, want) or (want is float and isinstance(v, int)) or (want is str and v is None)
        if not ok or (want is not bool and isinstance(v, bool)):
            raise RoadtopError(f"{where}.{k}={v!r} should be {want.__name__}: fix it in the plan")
    st = KaggleSettings(**{k: ("" if v is None else v) for k, v in raw.items()})
    if st.code_competition:  # Kaggle reruns the submitted kernel on its hidden test set: the predict notebook's
        predict = [n for n, s in STAGES.items() if s.predicts]
        if not any(j.stage in predict for j in getattr(plan, "jobs", None) or []):
            raise RoadtopError(f"{where}.code_competition: Kaggle reruns the submitted notebook on its hidden test "
                               f"set, offline: add a `{predict[0]}: {{}}` section, whose kernel is submitted")
        st.stages = st.stages if "stages" in raw else [*st.stages, *predict]
    st.slug_prefix = st.slug_prefix or slugify(f"roadtop-{getattr(plan, 'name', 'plan')}")
    for ds in [st.weights_dataset, *st.datasets]:
        if ds and not re.fullmatch(r"[\w.-]+/[\w.-]+", ds):
            raise RoadtopError(f"{where}: dataset '{ds}' should be owner/slug, as in its URL")
    retired = RETIRED_ACCELERATORS.get(st.accelerator.strip().lower())
    if retired:
        raise RoadtopError(f"{where}.accelerator={st.accelerator} is retired on Kaggle: {retired} Set "
                           "kaggle.accelerator: NvidiaTeslaT4 (or another current machine shape)")
    if st.gpus_per_session < 0:
        raise RoadtopError(f"{where}.gpus_per_session={st.gpus_per_session} should be 0 (the accelerator's) or more")
    has = GPUS_OF_SHAPE.get(st.accelerator.strip().lower())
    if has and st.gpus_per_session > has:  # a pack's run on a card the session lacks would fail at once
        raise RoadtopError(f"{where}.gpus_per_session={st.gpus_per_session} is more than the {has} GPUs a "
                           f"{st.accelerator} session has: set 0 (the accelerator's) or at most {has}")
    st.gpus_per_session = st.gpus_per_session or has or 1
    if st.max_gpu_sessions < 1:
        raise RoadtopError(f"{where}.max_gpu_sessions={st.max_gpu_sessions} should be 1 or more")
    return st


def internet_on(st: KaggleSettings) -> tuple:
    """(internet on?, why) for the plan's kernels: `kaggle.internet` true/false forces it; auto follows the
    competition kind."""
    if st.internet is True or st.internet is False:
        return st.internet, f"kaggle.internet: {str(st.internet).lower()}"
    if st.code_competition:
        return False, "code competition: submitted kernels must run offline, pretrained weights come from a dataset"
    return True, "file competition: timm fetches pretrained weights from its hub, no weights dataset needed"


def slugify(text: str) -> str:
    """Kaggle-style slug: lowercase ASCII letters, digits and single hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def kernel_slug(prefix: str, run: str) -> str:
    """Slug of run `run`'s kernel: <prefix>-<run>, 5-50 characters (a long one ends in a short hash)."""
    s = slugify(f"{prefix}-{run}")
    if len(s) > 50:
        s = s[:43].rstrip("-") + "-" + hashlib.sha1(s.encode()).hexdigest()[:6]
    return s if len(s) >= 5 else f"{s}-kernel"


def kernel_title(slug: str) -> str:
    """A title that Kaggle turns back into exactly `slug` (Kaggle derives a kernel's URL from its title)."""
    return slug.replace("-", " ")


def kaggle_dir(plan) -> Path:
    """Where the kernel folders and the push record (kernels.json) of `plan` live: <out_dir>/kaggle/<name>."""
    return Path(plan.out_dir) / "kaggle" / slugify(plan.name)
