"""The notebook of a GPU pack kernel: a short driver that runs the pack's notebooks at once, one per GPU."""

import json
from pathlib import Path

import nbformat

from ..paths import KAGGLE_WORKING

__all__ = ["DRIVER", "PACK_JSON", "pack_notebook"]

PACK_JSON = "pack.json"  # written by the driver into /kaggle/working: run -> state (complete/failed), gpu, cause

INTRO = """# {n} runs at once, one per GPU

A Kaggle GPU session has {gpus} GPUs and is billed once for all of them, so this notebook trains {n} runs of the
plan side by side: each run is its own notebook, executed by papermill (shipped in Kaggle's image) in its own
process that sees only its card (`CUDA_VISIBLE_DEVICES`) and its share of the CPUs. Each run writes its outputs and
its executed notebook to `/kaggle/working/<run>/`. A run that fails fails alone: `pack.json` says how each ended."""

# The driver, as the learner reads it on Kaggle: RUNS (name, out folder, notebook) and GPUS come from the cell above
DRIVER = """import json, os, subprocess, sys, tempfile

share = max(1, (os.cpu_count() or 1) // len(RUNS))  # DataLoader workers: the CPUs split between the runs
procs = {}
for gpu, run in enumerate(RUNS):
    os.makedirs(run["out"], exist_ok=True)
    tmp = tempfile.mkdtemp()  # each run's own temp folder (and its own copy of the roadtop modules)
    src = os.path.join(tmp, run["notebook_name"])
    with open(src, "w", encoding="utf-8") as f:
        f.write(run["notebook"])
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu % GPUS), OMP_NUM_THREADS=str(share), TMPDIR=tmp)
    log = open(os.path.join(run["out"], "papermill.log"), "w", encoding="utf-8")
    cmd = [sys.executable, "-m", "papermill", src, os.path.join(run["out"], run["notebook_name"])]
    procs[run["run"]] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log, gpu % GPUS)

results = {}
for name, (proc, log, gpu) in procs.items():
    proc.wait()
    log.close()
    with open(log.name, encoding="utf-8") as f:
        said = [line.strip() for line in f if line.strip()]
    cause = "" if proc.returncode == 0 else (said[-1] if said else f"exit code {proc.returncode}")
    results[name] = {"state": "complete" if proc.returncode == 0 else "failed", "gpu": gpu, "cause": cause}
    print(f"{name} (GPU {gpu}): {results[name]['state']} {cause}")
with open(PACK_JSON, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
"""


def pack_notebook(jobs: list, texts: list, names: list, gpus: int, working=KAGGLE_WORKING):
    """The pack kernel's notebook: a note, a hidden cell holding the runs' notebooks `texts` (papermill-ready, as
    each would be pushed alone), the driver. `names`: each run's out folder under `working` (Kaggle's output)."""
    runs = [{"run": j.name, "out": f"{working}/{d}", "notebook_name": Path(j.notebook).name, "notebook": t}
            for j, d, t in zip(jobs, names, texts, strict=True)]
    data = (f"# the runs of this pack, each a notebook with its parameters (added by `pipeline.py kaggle push`)\n"
            f"import json\nGPUS = {gpus}\nPACK_JSON = {str(working) + '/' + PACK_JSON!r}\n"
            f"RUNS = json.loads({json.dumps(runs)!r})\n")
    cells = [nbformat.v4.new_markdown_cell(INTRO.format(n=len(jobs), gpus=gpus), metadata={"tags": ["pack-intro"]}),
             nbformat.v4.new_code_cell(data, metadata={"tags": ["pack-runs"], "_kg_hide-input": True}),
             nbformat.v4.new_code_cell(DRIVER, metadata={"tags": ["pack-driver"]})]
    for c in cells:
        c.id = c.metadata["tags"][0]  # fixed ids: the same pack gives the same text (and hash)
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb
