"""The scheduler's decision, over data only: kernel states, and for each kernel still to send: push, wait (why) or
fail (why). No HTTP here; roadtop.kaggle.flow asks Kaggle, calls `decide`, does what it says."""

from dataclasses import dataclass
from enum import Enum, StrEnum

__all__ = ["ENDED_BADLY", "Action", "Candidate", "Decision", "KernelState", "asks_datasets", "decide", "pack_runs", "running_repushes", "state_of", "too_long"]


class KernelState(str, Enum):
    """A kernel version's state: kagglesdk's KernelWorkerStatus (kernels_enums.py, 2.2.5) plus RUN_FAILED, ours."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    ERROR = "ERROR"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"  # asked to stop, still running: it still holds its GPU session
    CANCEL_ACKNOWLEDGED = "CANCEL_ACKNOWLEDGED"  # stopped: ended, as a failure
    NEW_SCRIPT = "NEW_SCRIPT"  # a version made, not yet queued: it waits like QUEUED
    # ours: a run that gives no outputs although Kaggle did not say ERROR: its version lost a source, or the run
    # failed inside its pack (its pack.json says so). (Not the dag's failed.json: that is a local job's record.)
    RUN_FAILED = "RUN_FAILED"

    @property
    def holds_session(self) -> bool:
        """True while the version takes one of the account's sessions (queued, running, or being cancelled)."""
        return self in (KernelState.NEW_SCRIPT, KernelState.QUEUED, KernelState.RUNNING,
                        KernelState.CANCEL_REQUESTED)

    @property
    def ended(self) -> bool:
        """True once the version will not change any more."""
        return not self.holds_session

    @property
    def bad(self) -> bool:
        """True for a version that ended without its outputs."""
        return self in ENDED_BADLY

    @property
    def why(self) -> str:
        """What the state means, for a failure line ('' when nothing to add)."""
        return "cancelled on Kaggle" if self is KernelState.CANCEL_ACKNOWLEDGED else ""


ENDED_BADLY = frozenset({KernelState.ERROR, KernelState.CANCEL_ACKNOWLEDGED, KernelState.RUN_FAILED})
_RENAMED = {"FAILED": "RUN_FAILED"}  # as push records written before the rename say it


def state_of(text) -> KernelState:
    """The KernelState named by `text` (a record's status, or the client's enum); an unknown name is taken as
    QUEUED: it holds a session until Kaggle says otherwise."""
    name = getattr(text, "name", str(text or "")).upper()
    return KernelState.__members__.get(_RENAMED.get(name, name), KernelState.QUEUED)


@dataclass(frozen=True)
class Candidate:
    """A kernel still to send: name, the runs it reads, GPU or not, its own datasets, up to date already."""

    name: str
    needs: tuple = ()  # runs (not kernels) whose outputs it reads
    runs: tuple = ()  # the runs it carries (a pack's runs); () means just `name`
    gpu: bool = False
    datasets: tuple = ()
    current: bool = False  # recorded with this content and these source versions, not ended badly


class Action(StrEnum):
    """What the scheduler does with a kernel still to send."""

    PUSH = "push"
    WAIT = "wait"  # for the runs it reads, its datasets or a free GPU session: decided again at the next poll
    FAIL = "fail"  # it cannot run: a run it reads failed, its dataset is missing/FAILED/DELETED
    SKIP = "skip"  # already pushed with these parameters and sources


@dataclass(frozen=True)
class Decision:
    """What to do with one candidate: its Action, why, the fix (for a failure)."""

    action: Action
    why: str = ""
    fix: str = "fix it, then `pipeline.py kaggle push` again"


def _dataset_verdict(ds: str, status: str):
    """Decision ('fail' | 'wait') for one of the kernel's own datasets by its Kaggle status; None when ready."""
    make = f"`pipeline.py kaggle weights FOLDER --dataset {ds}`"
    if status == "missing":
        return Decision(Action.FAIL, f"dataset {ds} does not exist on Kaggle", f"create it with {make}")
    if status in ("failed", "deleted"):  # kagglesdk DatabundleVersionStatus FAILED / DELETED: it never gets ready
        return Decision(Action.FAIL, f"dataset {ds} is {status.upper()} on Kaggle", f"upload it again with {make}")
    if status != "ready":
        return Decision(Action.WAIT, f"dataset {ds} ({status}) is not ready")
    return None


def _queued(todo: list) -> set:
    """The runs the candidates `todo` carry (a pack's runs, else the candidate itself): still to send."""
    return {r for c in todo for r in (c.runs or (c.name,))}


def decide(todo: list, states: dict, datasets: dict, busy: int, cap: int, failed=(), force=False,
           kaggle_full=False) -> dict:
    """name -> Decision for each Candidate in `todo`, in order: a kernel is skipped when already up to date and
    no run it reads is still to send (unless `force`); fails when a run it reads failed or ended badly, or its
    dataset is missing/FAILED/DELETED; waits for the runs it reads (until COMPLETE), for its datasets, for a free
    GPU session (`busy` of `cap` taken, counting the pushes decided here; none at all when `kaggle_full`: Kaggle
    refused a GPU push as over the account's sessions); else is pushed. `states`: run -> KernelState;
    `datasets`: own dataset -> Kaggle status (lowercase, 'missing' when it does not exist)."""
    out, queued, failed = {}, _queued(todo), set(failed)
    for c in todo:
        if c.current and not force and not any(n in queued for n in c.needs):
            out[c.name] = Decision(Action.SKIP, "already pushed with these parameters and sources")
            continue
        broken = [n for n in c.needs if n in failed or (n not in queued and n in states and states[n].bad)]
        if broken:
            n = broken[0]
            why = "could not be pushed" if n in failed else f"ended in {states[n].value} on Kaggle"
            out[c.name] = Decision(Action.FAIL, f"{n} {why}")
            failed |= {c.name, *c.runs}
            continue
        pending = [n for n in c.needs if n in queued or states.get(n) is not KernelState.COMPLETE]
        if pending:
            out[c.name] = Decision(Action.WAIT, f"needs {', '.join(pending)}")
            continue
        verdicts = [v for v in (_dataset_verdict(d, datasets.get(d, "ready")) for d in c.datasets) if v]
        bad = [v for v in verdicts if v.action is Action.FAIL] or verdicts
        if bad:
            out[c.name] = bad[0]
            if bad[0].action is Action.FAIL:
                failed |= {c.name, *c.runs}
            continue
        if c.gpu and kaggle_full:
            out[c.name] = Decision(Action.WAIT, "Kaggle: GPU sessions busy")
            continue
        if c.gpu and busy >= cap:
            out[c.name] = Decision(Action.WAIT, f"GPU sessions busy ({busy} of {cap})")
            continue
        out[c.name] = Decision(Action.PUSH)
        busy += c.gpu
    return out


def asks_datasets(c: Candidate, todo: list, states: dict) -> bool:
    """True when `c`'s own datasets are worth asking Kaggle about: every run it reads is COMPLETE already."""
    queued = _queued(todo)
    return not any(n in queued or states.get(n) is not KernelState.COMPLETE for n in c.needs)


def running_repushes(names, record: dict) -> list:
    """The runs of `names` whose recorded version still holds a session: a new version would not stop it
    (Kaggle/kaggle-cli#388), so both would be billed."""
    return [n for n in names if n in record["kernels"] and state_of(record["kernels"][n].get("status")).holds_session]


def pack_runs(seconds: dict, gpus: int, session_s: float) -> tuple:
    """(packs, problems): the runs of `seconds` (run -> the probe's estimate; NaN or None: not measured) in packs of
    up to `gpus` runs, one kernel each, longest with longest, so a pack, which lasts as long as its longest run,
    wastes the least; unmeasured runs go last, in plan order. A pack longer than `session_s` is a problem."""
    known = sorted((r for r, s in seconds.items() if s == s and s is not None), key=lambda r: -seconds[r])
    order = known + [r for r in seconds if r not in known]
    packs = [tuple(order[i:i + gpus]) for i in range(0, len(order), max(1, gpus))]
    return packs, too_long({f"pack {', '.join(p)}": p for p in packs}, seconds, session_s)


def too_long(kernel_runs: dict, seconds: dict, session_s: float) -> list:
    """A line for each kernel (name -> the runs it trains) whose estimate, its longest measured run's (a pack
    lasts as long as that), passes one Kaggle session of `session_s` seconds: Kaggle would stop it there."""
    out = []
    for name, runs in kernel_runs.items():
        known = [seconds[r] for r in runs if seconds.get(r) is not None and seconds[r] == seconds[r]]
        if known and max(known) > session_s:
            out.append(f"{name} needs est. {max(known) / 3600:.2f} h, more than one {session_s / 3600:g} h session")
    return out
