"""Which jobs start now, and in which slot: `run --gpus` / `run --jobs` in, a decision out, no processes, no I/O.

A run of the plan holds one slot per card it was given (`--gpus 0,1`: two; no `--gpus`: one slot, the card the
process already sees), or `--jobs N` slots that share this machine (named cpu0, cpu1, ...: each job sees the cards
this process sees, and gets its share of the CPU threads). A job starts when its upstream jobs are settled (ran,
were skipped, or failed) and a slot is free; until then it waits, and `decide` says what for. Whether a job that may start has to run at all (up to date,
not in --only, an ensemble short of members) is the runner's `job_step`, as in a sequential run.
"""

from dataclasses import dataclass, field

from ..errors import RoadtopError

__all__ = ["ONE_SLOT", "Decision", "decide", "parse_gpus", "parse_jobs", "slot_label", "job_env"]

ONE_SLOT = (None,)  # no --gpus, --jobs 1: one job at a time, in this process, on whatever card it sees
SHARED = "cpu"  # the name of a --jobs slot, then its number: no card of its own


def slot_label(slot) -> str:
    """How the log names a slot: 'card 1' for a card of --gpus, 'cpu0' for a --jobs slot, '' for the one slot."""
    if slot is None:
        return ""
    return slot if str(slot).startswith(SHARED) else f"card {slot}"


@dataclass(frozen=True)
class Decision:
    """What to do now: `start` the first job that may start on the card it gets (or None), and why each other
    unsettled job waits ({name: why}). Nothing to start and nothing running: the plan is done."""

    start: tuple = None  # (job name, card)
    waits: dict = field(default_factory=dict)


def decide(jobs, settled, running: dict, cards: tuple, seconds=None) -> Decision:
    """The next job to start, in plan order (given `seconds`, the longest expected first), and why the others wait.

    `jobs`: the plan's jobs in order (each with .name and .needs); `settled`: the names that ran, were skipped or
    failed; `running`: name -> card of the jobs running now; `cards`: every card of this run, one slot each. A job
    may start once each job it needs is settled; it gets the first free card, in the order the cards were given.
    `seconds`: job name -> expected seconds (the probe's estimates): of the jobs that may start, the longest goes
    first, so the long runs do not end last, one after the other (jobs without an estimate keep plan order, after
    those with one): longest-processing-time-first, the classic greedy for jobs on parallel machines.
    """
    free = [c for c in cards if c not in running.values()]
    start, waits = None, {}
    seconds = seconds or {}
    for j in sorted(jobs, key=lambda j: -seconds.get(j.name, 0)):
        if j.name in settled or j.name in running:
            continue
        busy = [n for n in j.needs if n in running]
        later = [n for n in j.needs if n not in settled and n not in running]
        if busy or later:
            waits[j.name] = "waits for " + "; ".join(
                s for s in (f"{', '.join(busy)} (running)" if busy else "",
                            f"{', '.join(later)} (not started)" if later else "") if s)
        elif start is None and free:
            start = (j.name, free[0])
        else:
            what = "slot" if any(str(c).startswith(SHARED) for c in cards) else "card"
            busy = ", ".join(f"{n} on {slot_label(c)}" for n, c in running.items())
            waits[j.name] = f"waits for a free {what} ({busy})" if running else f"waits for a free {what}"
    return Decision(start, waits)


def parse_gpus(value, visible=None, cuda_visible=None) -> tuple:
    """`--gpus` as the cards to run on: None -> ONE_SLOT; '0,1' -> ('0', '1'); 'auto' -> every visible card.

    `visible`: how many cards torch sees (torch.cuda.device_count()); 0 = no CUDA, then the numbers are slots only,
    each job's process still told its card. `cuda_visible`: this process's CUDA_VISIBLE_DEVICES, if set: card k is
    then its k-th entry, so a job sees the card this process calls k. Anything else is one line.
    """
    if value is None:
        return ONE_SLOT
    if value == "auto":
        if not visible:
            raise RoadtopError("--gpus auto: no GPU is visible (torch.cuda.device_count() is 0): list the cards "
                               "(e.g. --gpus 0,1), or leave --gpus out to run one job at a time")
        picked = list(range(visible))
    else:
        parts = [p.strip() for p in str(value).split(",")]
        bad = [p for p in parts if not p.isdigit()]
        if bad:
            raise RoadtopError(f"--gpus {value}: {', '.join(repr(p) for p in bad)} is not a card number: use "
                               f"numbers such as --gpus 0,1, or --gpus auto")
        picked = [int(p) for p in parts]
        if len(set(picked)) != len(picked):
            raise RoadtopError(f"--gpus {value}: a card is listed twice: list each card once (one job per card)")
        missing = [k for k in picked if visible and k >= visible]
        if missing:
            raise RoadtopError(f"--gpus {value}: card {', '.join(map(str, missing))} is not visible (torch sees "
                               f"{visible}: 0..{visible - 1}): list visible cards, or --gpus auto")
    seen = [c.strip() for c in cuda_visible.split(",")] if cuda_visible else None
    if seen is not None and visible and len(seen) >= visible:
        return tuple(seen[k] for k in picked)
    return tuple(str(k) for k in picked)


def parse_jobs(value) -> tuple:
    """`--jobs N` as N slots sharing this machine: ('cpu0', ..., 'cpu{N-1}'); 1 -> ONE_SLOT. Else one line."""
    text = str(value).strip()
    if not (text.isascii() and text.isdecimal()) or int(text) < 1:
        raise RoadtopError(f"--jobs {value}: not a number of jobs (1 or more): use a whole number such as --jobs 2 "
                           f"(at most one per CPU core is useful)")
    n = int(text)
    return ONE_SLOT if n == 1 else tuple(f"{SHARED}{k}" for k in range(n))


def job_env(env: dict, card, cards: tuple, cpus: int) -> dict:
    """The environment of a job in slot `card` when `cards` run at once: on a card of --gpus it sees only that card
    (CUDA_VISIBLE_DEVICES); in a --jobs slot it sees what this process sees. Either way it gets its share of this
    run's CPU threads (OMP_NUM_THREADS if set, else `cpus`), which the notebooks' DataLoader workers follow too
    (roadtop.train.num_workers). One slot: the environment as it is."""
    if card is None:
        return dict(env)
    first = str(env.get("OMP_NUM_THREADS") or "").split(",")[0].strip()  # OpenMP also takes a list: "4,2"
    threads = (int(first) if first.isascii() and first.isdecimal() else 0) or cpus
    share = {"OMP_NUM_THREADS": str(max(1, threads // len(cards)))}
    return {**env, **share} if str(card).startswith(SHARED) else {**env, "CUDA_VISIBLE_DEVICES": str(card), **share}
