"""One job: its notebook run with papermill into its out_dir, manifest.json written last; and a job's own process.

`python -m roadtop.dag.execute SPEC RESULT` is what roadtop.dag.procs.JobProcs starts for each job of `run --gpus`
or `run --jobs`. It imports only what running a notebook takes (papermill, the records), not the planner's modules
(timm, torch): the process starts in well under a second, not the seconds the plan's imports take.
"""

import json
import os
import pickle
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import papermill as pm
from jupyter_client import AsyncKernelManager
from traitlets.config import Config

from ..clock import utc_now
from ..paths import atomic_write
from .records import FAILED, MANIFEST, State, cause, record_failure

__all__ = ["AUTOSAVE_S", "JobSpec", "execute_job", "read_spec", "write_spec", "run_one"]

AUTOSAVE_S = 2  # papermill saves the executed notebook this often while a cell runs: watch a training cell's epochs


@dataclass(frozen=True)
class JobSpec:
    """What running a job takes of a rendered job (roadtop.dag.render.Job.spec): its name, stage, notebook, plain
    parameters and output folder."""

    name: str
    stage: str
    notebook: Path
    params: dict
    out_dir: Path


def write_spec(path: Path, job: JobSpec, fp: str, parts: dict):
    """The SPEC file a job's process reads."""
    path.write_bytes(pickle.dumps((job, fp, parts)))


def read_spec(spec) -> tuple:
    """(job, fingerprint, parts) from a SPEC file write_spec wrote."""
    return pickle.loads(Path(spec).read_bytes())


def _kernel_config(sockets: str):
    """nbclient's config for a kernel that talks over Unix sockets in the folder `sockets` (its own, so kernels
    never share one): local only, and so without ipykernel's warning that TCP between the two is unencrypted."""
    return Config({"KernelManager": {"transport": "ipc", "ip": str(Path(sockets) / "kernel")}})


class _Kernel(AsyncKernelManager):
    """nbclient's kernel manager, less the SIGINT that jupyter_client sends every kernel before asking it to shut
    down: a kernel between two messages logs it ('KeyboardInterrupt caught in kernel') on the pipeline's stderr."""

    async def _async_interrupt_kernel(self):
        """Interrupt the kernel, unless it is being shut down (the shutdown request ends it all the same)."""
        if not self.shutting_down:
            await super()._async_interrupt_kernel()


def execute_job(job, fp: str, parts: dict, log=print, progress: bool = True) -> dict:
    """Run one notebook with papermill into its out_dir; manifest.json (written last) marks it complete.

    papermill saves the executed notebook as <stage>.running.ipynb while it runs (every AUTOSAVE_S seconds); it is
    renamed to <stage>.ipynb when the notebook ends (with its error cell if one failed). When writing fails (a full
    disk, a folder gone read-only) the half-written copy is removed: the last good <stage>.ipynb stays.
    `progress`: papermill's progress bar (off when jobs run side by side: their bars would mix).
    """
    out = job.out_dir
    executed, running = out / f"{job.stage}.ipynb", out / f"{job.stage}.running.ipynb"
    t0 = time.time()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in (MANIFEST, FAILED):  # from here until the manifest is rewritten, the job is not complete
            (out / stale).unlink(missing_ok=True)
        before = {p.name: p.stat().st_mtime for p in out.iterdir()}
    except OSError as e:
        return record_failure(job, f"cannot write in {out}: {cause(e)}", notebook=executed.name)
    try:
        with tempfile.TemporaryDirectory(prefix="roadtop-kernel-") as sockets:
            pm.execute_notebook(str(job.notebook), str(running), parameters=job.params, cwd=str(job.notebook.parent),
                                kernel_name="python3", progress_bar=progress, log_output=False,
                                autosave_cell_every=AUTOSAVE_S, config=_kernel_config(sockets),
                                kernel_manager_class=_Kernel)
    except OSError as e:  # papermill could not save the notebook: what it left is half-written
        running.unlink(missing_ok=True)
        return record_failure(job, cause(e), seconds=time.time() - t0, notebook=executed.name)
    except Exception as e:  # noqa: BLE001 - any failure of one job must not stop the others
        failure = cause(e)
        try:
            os.replace(running, executed)  # the whole notebook, with its error cell
        except OSError:
            running.unlink(missing_ok=True)
        return record_failure(job, failure, seconds=time.time() - t0, notebook=executed.name)
    try:
        os.replace(running, executed)
        outputs = sorted(p.name for p in out.iterdir()
                         if p.is_file() and not p.name.startswith(".") and p.name not in (executed.name, MANIFEST)
                         and (p.name not in before or p.stat().st_mtime != before[p.name]))
        rec = {"job": job.name, "fingerprint": fp, "seconds": round(time.time() - t0, 1),
               "finished": utc_now(), "notebook": executed.name, "outputs": outputs,
               "params": job.params, "parts": parts}
        with atomic_write(out / MANIFEST) as f:
            json.dump(rec, f, indent=1, default=str)
    except OSError as e:  # the manifest could not be written: the job is not complete
        return record_failure(job, f"manifest.json not written: {cause(e)}", seconds=time.time() - t0,
                              notebook=executed.name)
    return {"state": State.COMPLETE, **rec}


def _end_with(parent: int, every_s: float = 1.0):
    """End this process as soon as its parent is gone (`run` killed however it was, its lock let go): a job of a
    dead run must not write on beside the next one. Its notebook kernel follows it (ipykernel watches its parent)."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def run_one(spec, result) -> int:
    """A job's own process (`python -m roadtop.dag.execute SPEC RESULT`, started by roadtop.dag.procs.JobProcs): run
    the job in SPEC with execute_job, write its record to RESULT; it ends with the pipeline that started it."""
    threading.Thread(target=_end_with, args=(os.getppid(),), daemon=True).start()
    job, fp, parts = read_spec(spec)
    state = execute_job(job, fp, parts, progress=False)
    with atomic_write(result) as f:
        json.dump(state, f, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(run_one(*sys.argv[1:]))
