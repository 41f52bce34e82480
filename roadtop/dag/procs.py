"""Jobs in processes of their own, one per slot: what `run --gpus` / `--jobs` starts, and what each comes back with.

Each job is `python -m roadtop.dag.execute SPEC RESULT`: execute_job, as a one-at-a-time run calls it, on one
job's JobSpec, its record written to RESULT. The process, and the notebook kernel papermill starts in it, get the
environment of roadtop.dag.slots.job_env (OMP_NUM_THREADS: its share of the CPU threads; with --gpus, CUDA_VISIBLE_DEVICES: its
card).
"""

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from .execute import write_spec
from .records import record_failure
from .slots import job_env

__all__ = ["CHILD", "Inline", "JobProcs"]

CHILD = "roadtop.dag.execute"  # the module a job's process runs (`python -m`), given SPEC and RESULT


class JobProcs:
    """Up to len(cards) jobs at once, one process each: `start` one in a free slot, `next` waits for one to end.

    Used as a context manager: leaving it (an error, Ctrl-C) stops the processes still running, and waits for them.
    """

    def __init__(self, cards: tuple, env=None, cpus=None):
        self.cards, self.env, self.cpus = tuple(cards), dict(os.environ if env is None else env), cpus or os.cpu_count()
        self.procs, self.futures, self.started = {}, {}, 0

    def __enter__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="roadtop-jobs-")
        self._pool = ThreadPoolExecutor(len(self.cards))
        return self

    def __exit__(self, *exc):
        for p in list(self.procs.values()):
            if p.poll() is None:
                p.terminate()
        self._pool.shutdown(wait=True)
        self._tmp.cleanup()

    def start(self, job, fp: str, parts: dict, card):
        """Start `job` (a JobSpec) in its own process in slot `card` (the environment that slot's job gets)."""
        self.started += 1
        folder = Path(self._tmp.name) / str(self.started)
        folder.mkdir()
        spec, result = folder / "job.pickle", folder / "result.json"
        write_spec(spec, job, fp, parts)
        env = job_env(self.env, card, self.cards, self.cpus)
        self.futures[self._pool.submit(self._run, job, spec, result, env)] = job.name

    def _run(self, job, spec: Path, result: Path, env: dict) -> dict:
        """Run one job's process to its end; its record (the record of a failure, if it wrote none)."""
        p = self.procs[job.name] = subprocess.Popen([sys.executable, "-m", CHILD, str(spec), str(result)], env=env)
        code = p.wait()
        try:
            return json.loads(result.read_text())
        except (OSError, ValueError):  # it died before saying how it ended (killed, out of memory, ...)
            return record_failure(job, f"its process ended with exit code {code} before recording how the job ended")

    def next(self) -> tuple:
        """(job name, record) of the next job to end, waiting for it."""
        done, _ = wait(self.futures, return_when=FIRST_COMPLETED)
        f = next(iter(done))
        return self.futures.pop(f), f.result()


class Inline:
    """One job at a time in this process, as a sequential run does: `start` runs it to its end, `next` hands back
    its record. The same interface as JobProcs, so `run` has one loop."""

    def __init__(self, execute):
        self.execute, self.done = execute, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def start(self, job, fp: str, parts: dict, card):
        """Run `job` (a JobSpec) here and now (`card` is None: the process's own environment)."""
        self.done.append((job.name, self.execute(job, fp, parts)))

    def next(self) -> tuple:
        """(job name, record) of the job that ran."""
        return self.done.pop(0)
