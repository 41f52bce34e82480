"""A fake Kaggle API on 127.0.0.1 for the real `kaggle` client: records requests, answers, fails on cue."""

import base64
import io
import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nbformat
import pytest
from kaggle.api.kaggle_api_extended import KaggleApi
from kagglesdk import kaggle_env

from roadtop.dag.plan import load_plan
from roadtop.kaggle import flow

__all__ = [
    "KEY",
    "TOKEN",
    "USER",
    "WEIGHTS",
    "FakeKaggle",
    "Recorded",
    "Sleeps",
    "fake",
    "params_of",
    "plan",
    "push_all",
    "ref",
]

USER, KEY, TOKEN = "fake-user", "fake-key-5f3a9c0e1d2b4a6f", "fake-token-KGAT-77e1c2d3"
WEIGHTS = "fake-user/timm-weights"


@dataclass
class Recorded:
    """One request the fake received: HTTP verb, path, RPC method (or ''), headers, JSON payload, body."""

    verb: str
    path: str
    method: str
    headers: dict
    payload: dict | None
    body: bytes = field(repr=False)


class FakeKaggle:
    """Threaded HTTP server that speaks kagglesdk's `POST /api/v1/<Service>/<Method>` JSON protocol.

    State is plain attributes so tests can script it: `statuses[ref]` (a queue of worker statuses, the last
    one repeats; RUNNING when unscripted), `outputs[ref]` (file name -> bytes), `logs[ref]`, `datasets` (ref ->
    the fake time it is processed by); `fail(method, code)` queues error answers. `requests` records everything.

    What it was taught about the real service, each with its public source:
    - an account runs `gpu_cap` (2) batch GPU sessions at once; SaveKernel of one more GPU kernel answers HTTP
      200 with error "Maximum batch GPU session count of 2 reached." and makes no version (Kaggle/kaggle-cli#185,
      adapter-hub/playground#4);
    - GetDatasetStatus of a dataset that does not exist answers 403 "Permission 'datasets.get' was denied"
      (the message format of Kaggle/kaggle-cli#642; 404 for others' datasets, Kaggle/kaggle-cli#368); a new
      dataset or version is processed for a while before its status is READY (kagglesdk's
      DatabundleVersionStatus: BLOBS_RECEIVED ... READY);
    - SaveKernel with a dataset source that does not exist or is still processing makes and runs the version
      anyway, without it, listing it under invalidDatasetSources (Kaggle/kaggle-cli#433);
    - each SaveKernel makes a new version (versionNumber), GetKernel answers the current one
      (kagglesdk ApiKernelMetadata.current_version_number); GetKernelSessionStatus and ListKernelSessionOutput
      answer the latest version, or the one named by versionLabel "v<N>" (kaggle 2.2.5 `_kernel_version_label`:
      "the API expects them written as v<N> and returns 404 for the bare number");
    - a new version of a kernel whose last version is still queued or running does not stop that one: both run
      and hold a session (Kaggle/kaggle-cli#388);
    - KernelWorkerStatus also has NEW_SCRIPT, CANCEL_REQUESTED (still running) and CANCEL_ACKNOWLEDGED (kagglesdk
      kernels_enums.py), scriptable with `set_statuses`.
    - GetKernel names the image a kernel runs on (ApiKernelMetadata.docker_image): the one SaveKernel asked
      for (ApiSaveKernelRequest.docker_image: "one of the Kaggle-provided, known images ...
      gcr.io/kaggle-images/python@sha256:..."), else the newest image at the time of the push (`latest_image`);
      Kaggle/docker-python's releases move that image (78aaa43 pinned fastcore after a release broke fastai);
    - GetAcceleratorQuotaStatistics (the client's quota_view) answers the weekly GPU quota: gpuQuota.timeUsed and
      totalTimeAllowed as "<seconds>s" durations and quotaRefreshTime (kagglesdk ApiAcceleratorQuota and
      ApiGetAcceleratorQuotaStatisticsResponse); used time grows with the GPU sessions' time on the fake clock.
    With `use_clock()`, a kernel is QUEUED, then RUNNING for its run time, then COMPLETE, on a fake clock that the
    tests advance through the code's sleep hook (`tick`), so hours of Kaggle pass in no time.
    """

    def __init__(self, username="fake-user", key="fake-key-0123456789abcdef", token=None):
        """Remember the credentials the fake accepts (Basic user:key, or Bearer token)."""
        self.username, self.key, self.token = username, key, token
        self.requests: list[Recorded] = []
        self.versions = defaultdict(int)
        self.statuses = defaultdict(lambda: deque(["RUNNING"]))
        self.failure = {}
        self.outputs = defaultdict(dict)
        self.logs = {}
        self.datasets = {}  # ref -> fake time from which its status is READY
        self.dataset_processing_s = 0.0  # how long a new dataset (version) is processed
        self.uploads = {}
        self.gpu_cap = 2
        self.clock = 0.0
        self.clocked = False
        self.queue_s, self.run_s, self.run_s_of, self.errors_of = 0.0, 0.0, {}, {}
        self.sessions = {}  # ref -> (start, end, gpu) of its latest version (clock mode)
        self.version_sessions = {}  # (ref, version) -> (start, end, gpu) of every version (clock mode)
        self.version_outputs = {}  # (ref, version) -> file name -> bytes of an older version (else outputs[ref])
        self.meta = {}  # ref -> SaveKernel payload of its latest version
        self.max_gpu_active = 0
        self.outputs_of = None  # (ref, SaveKernel payload) -> file name -> bytes: what the version will write
        self.latest_image = "gcr.io/kaggle-gpu-images/python@sha256:" + "1" * 64
        self.images = {}  # ref -> image of its latest version
        self.quota_total_h, self.quota_used_h = 30.0, 0.0  # the weekly GPU quota (quota_view)
        self.quota_refresh = "2026-12-05T00:00:00Z"
        self.status_versions = []  # (ref, versionLabel) of every GetKernelSessionStatus
        self.refused = []  # slugs refused by the session cap, in order
        self.pushes = []  # (fake time, ref, version) of every version made
        self._faults = defaultdict(deque)
        self._lock = threading.Lock()
        self._server = None

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self):
        """Serve on 127.0.0.1 at a free port in a daemon thread; returns self."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                fake._handle(self, "POST")

            def do_PUT(self):
                fake._handle(self, "PUT")

            def do_GET(self):
                fake._handle(self, "GET")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        kw = {"poll_interval": 0.02}  # quick shutdown
        threading.Thread(target=self._server.serve_forever, kwargs=kw, daemon=True).start()
        return self

    def stop(self):
        """Shut the server down."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self):
        """Base URL, e.g. http://127.0.0.1:54321."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ---- scripting -----------------------------------------------------------------------------------------
    def fail(self, method, code, times=1, message=None, headers=None, after=False):
        """Answer the next `times` calls of RPC `method` (e.g. 'SaveKernel'; 'download' / 'upload' for the file
        transfers) with HTTP `code`; `after`: do what the call asks first, then answer the error (lost answer)."""
        for _ in range(times):
            self._faults[method].append((code, message or f"fake error {code}", headers or {}, after))

    def use_clock(self, run_s=100.0, queue_s=5.0, run_s_of=None, errors_of=None):
        """Kernels go QUEUED (`queue_s`) -> RUNNING (`run_s`, or run_s_of[ref]) -> COMPLETE (ERROR with the
        message errors_of[ref]) on the fake clock, from their push."""
        self.clocked, self.run_s, self.queue_s = True, run_s, queue_s
        self.run_s_of, self.errors_of = dict(run_s_of or {}), dict(errors_of or {})

    def tick(self, seconds):
        """Advance the fake clock (use it as the code's sleep hook)."""
        self.clock += seconds

    def add_dataset(self, ref, ready_in=0.0):
        """A dataset of the account, processed `ready_in` fake seconds from now."""
        self.datasets[ref] = self.clock + ready_in

    def active_gpu(self):
        """GPU kernels queued or running now."""
        if self.clocked:
            return sum(1 for start, end, gpu in self.version_sessions.values() if gpu and start <= self.clock < end)
        return sum(1 for ref, m in self.meta.items()
                   if m.get("enableGpu") and self.statuses[ref][0] in ("QUEUED", "RUNNING"))

    def set_statuses(self, ref, *statuses, failure=None):
        """Script what GetKernelSessionStatus answers for kernel `ref`, one status per call (last repeats)."""
        self.statuses[ref] = deque(statuses)
        if failure:
            self.failure[ref] = failure

    def calls(self, method):
        """JSON payloads of every call to RPC `method`, in order."""
        return [r.payload for r in self.requests if r.method == method]

    # ---- serving -------------------------------------------------------------------------------------------
    def _handle(self, h, verb):
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n else b""
        path = h.path.split("?")[0]
        parts = path.strip("/").split("/")
        method = parts[-1] if (verb == "POST" and "v1" in parts) else ""
        try:
            payload = json.loads(body) if method and body else None
        except ValueError:
            payload = None
        with self._lock:
            self.requests.append(Recorded(verb, path, method, dict(h.headers), payload, body))
            key = method or {"download": "download", "upload": "upload"}.get(parts[0], "")
            fault = self._faults[key].popleft() if key and self._faults[key] else None
        if fault and fault[3] and method:
            getattr(self, f"_rpc_{method}")(payload or {})  # done, but the answer is lost
        if fault:
            code, message, headers, _ = fault
            return self._send(h, code, {"code": code, "message": message}, headers)
        if verb == "GET" and parts[0] == "download":
            kref, v = "/".join(parts[1:3]), int(h.path.partition("?v=")[2] or 0)
            data = self.version_outputs.get((kref, v), self.outputs[kref]).get("/".join(parts[3:]))
            return self._send_bytes(h, 200 if data is not None else 404, data or b"not found")
        if verb == "PUT" and parts[0] == "upload":
            self.uploads[parts[1]] = body
            return self._send(h, 200, {})
        if not method:
            return self._send(h, 404, {"code": 404, "message": f"no route {path}"})
        if method != "IntrospectToken" and not self._authorized(h.headers.get("Authorization", "")):
            return self._send(h, 401, {"code": 401, "message": "Unauthenticated"})
        answer = getattr(self, f"_rpc_{method}", None)
        if answer is None:
            return self._send(h, 404, {"code": 404, "message": f"fake has no {method}"})
        code, out = answer(payload or {})
        return self._send(h, code, out)

    def _authorized(self, auth):
        basic = "Basic " + base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
        return auth == basic or (self.token is not None and auth == f"Bearer {self.token}")

    def _send(self, h, code, obj, headers=None):
        data = json.dumps(obj).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _send_bytes(self, h, code, data):
        h.send_response(code)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    # ---- RPC methods (names as kagglesdk posts them) -------------------------------------------------------
    def _rpc_IntrospectToken(self, p):
        ok = self.token is not None and p.get("token") == self.token
        return 200, {"active": ok, "username": self.username if ok else ""}

    def _dataset_status(self, ref):
        ready_at = self.datasets.get(ref)
        return None if ready_at is None else "READY" if self.clock >= ready_at else "BLOBS_RECEIVED"

    def _rpc_SaveKernel(self, p):
        ref = p["slug"]
        with self._lock:
            gpu = bool(p.get("enableGpu"))
            if gpu and self.active_gpu() >= self.gpu_cap:  # an old version still running counts (#388)
                self.refused.append(ref)
                return 200, {"error": f"Maximum batch GPU session count of {self.gpu_cap} reached."}
            self.versions[ref] += 1
            v = self.versions[ref]
            self.meta[ref] = p
            self.images[ref] = p.get("dockerImage") or self.latest_image
            if self.outputs_of is not None:
                self.outputs[ref] = self.outputs_of(ref, p)
            self.pushes.append((self.clock, ref, v))
            if self.clocked:
                end = self.clock + self.queue_s + self.run_s_of.get(ref, self.run_s)
                self.sessions[ref] = self.version_sessions[(ref, v)] = (self.clock, end, gpu)
            self.max_gpu_active = max(self.max_gpu_active, self.active_gpu())
            invalid = [d for d in p.get("datasetDataSources") or [] if self._dataset_status(d) != "READY"]
        out = {"ref": f"/code/{ref}", "url": f"{self.url}/code/{ref}", "versionNumber": v, "error": ""}
        if invalid:
            out["invalidDatasetSources"] = invalid
        return 200, out

    def _kref(self, p):
        return f"{p.get('userName')}/{p.get('kernelSlug')}"

    def _rpc_GetKernel(self, p):
        ref = self._kref(p)
        if ref not in self.versions:
            return 404, {"code": 404, "message": f"kernel {ref} not found"}
        return 200, {"metadata": {"ref": ref, "slug": ref.split("/")[1], "currentVersionNumber": self.versions[ref],
                                  "dockerImage": self.images.get(ref, "")}}

    def _version(self, p, ref):
        """The version a request names by versionLabel ("v3"), else the latest; None for a bare number (404)."""
        label = p.get("versionLabel")
        if not label:
            return self.versions[ref]
        return int(label[1:]) if label[:1] == "v" and label[1:].isdigit() else None

    def _rpc_GetKernelSessionStatus(self, p):
        ref = self._kref(p)
        v = self._version(p, ref) if ref in self.versions else None
        if v is None or not 1 <= v <= self.versions[ref]:
            return 404, {"code": 404, "message": f"kernel {ref} version {p.get('versionLabel')} not found"}
        self.status_versions.append((ref, p.get("versionLabel")))
        with self._lock:
            if self.clocked:
                start, end, _ = self.version_sessions.get((ref, v), (-1.0, -1.0, False))  # before the clock: ended
                status = ("QUEUED" if start <= self.clock < start + self.queue_s else "RUNNING" if self.clock < end
                          else "ERROR" if ref in self.errors_of else "COMPLETE")
                if status == "ERROR":
                    self.failure[ref] = self.errors_of[ref]
            else:
                q = self.statuses[f"{ref}/v{v}"] if f"{ref}/v{v}" in self.statuses else self.statuses[ref]
                status = q.popleft() if len(q) > 1 else q[0]
        out = {"status": status}
        if status == "ERROR":
            out["failureMessage"] = self.failure.get(ref, "Your notebook tried to allocate more memory.")
        return 200, out

    def _rpc_ListKernelSessionOutput(self, p):
        ref = self._kref(p)
        v = self._version(p, ref) if ref in self.versions else None
        if v is None or not 1 <= v <= self.versions[ref]:
            return 404, {"code": 404, "message": f"kernel {ref} version {p.get('versionLabel')} not found"}
        outs = self.version_outputs.get((ref, v), self.outputs[ref])
        files = [{"url": f"{self.url}/download/{ref}/{n}?v={v}", "fileName": n} for n in sorted(outs)]
        return 200, {"files": files, "log": self.logs.get(ref, "")}

    def _rpc_CreateCodeSubmission(self, p):
        return 200, {"message": "Successfully submitted to Paddy Doctor", "ref": 4242}

    def _rpc_StartSubmissionUpload(self, p):
        return 200, {"token": "sub-token-1", "createUrl": f"{self.url}/upload/sub-token-1"}

    def _rpc_CreateSubmission(self, p):
        return 200, {"message": "Successfully submitted to Paddy Doctor", "ref": 4343}

    def _rpc_GetAcceleratorQuotaStatistics(self, p):
        with self._lock:
            used = self.quota_used_h * 3600 + sum(max(0.0, min(self.clock, end) - start)
                                                  for start, end, gpu in self.version_sessions.values() if gpu)
        return 200, {"quotaRefreshTime": self.quota_refresh,
                     "gpuQuota": {"timeUsed": f"{used:.3f}s", "totalTimeAllowed": f"{self.quota_total_h * 3600:.0f}s"}}

    def _rpc_GetDatasetStatus(self, p):
        ref = f"{p.get('ownerSlug')}/{p.get('datasetSlug')}"
        status = self._dataset_status(ref)
        if status is None:
            return 403, {"code": 403, "message": "Permission 'datasets.get' was denied"}
        return 200, {"status": status}

    def _rpc_StartBlobUpload(self, p):
        tok = f"blob-{len(self.uploads) + len(self.requests)}"
        return 200, {"token": tok, "createUrl": f"{self.url}/upload/{tok}"}

    def _rpc_CreateDataset(self, p):
        ref = f"{p.get('ownerSlug')}/{p.get('slug')}"
        self.add_dataset(ref, self.dataset_processing_s)
        return 200, {"ref": ref, "url": f"{self.url}/datasets/{ref}", "status": "ok", "error": ""}

    def _rpc_CreateDatasetVersion(self, p):
        ref = f"{p.get('ownerSlug')}/{p.get('datasetSlug')}"
        self.add_dataset(ref, self.dataset_processing_s)
        return 200, {"ref": ref, "url": f"{self.url}/datasets/{ref}", "status": "ok", "error": ""}


# ---- pytest fixtures and helpers shared by the tests/test_kaggle_*.py files (pytest_plugins = ["fake_kaggle"]) --
class Sleeps(list):
    """A stand-in for time.sleep that records the delays and advances the running fake's clock instead."""

    fake = None

    def __call__(self, s):
        self.append(s)
        if Sleeps.fake is not None:
            Sleeps.fake.tick(s)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A started FakeKaggle with the weights dataset ready; the kaggle client points at it (every endpoint, prod
    too: nothing leaves 127.0.0.1), fake credentials in the environment, HOME in tmp_path."""
    f = FakeKaggle(USER, KEY, TOKEN).start()
    f.add_dataset(WEIGHTS)
    for env in list(kaggle_env._env_to_endpoint):
        monkeypatch.setitem(kaggle_env._env_to_endpoint, env, f.url)
    monkeypatch.setattr(KaggleApi, "args", ["--local"])  # as KAGGLE_API_ENVIRONMENT=LOCALHOST: /api/v1/...
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_API_ENVIRONMENT",
                "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    Sleeps.fake = f
    yield f
    Sleeps.fake = None
    f.stop()


@pytest.fixture
def plan(tmp_path):
    """A real plan (roadtop.dag.plan.load_plan): two training runs (one pretrained) and the ensemble; internet
    forced off, so the pretrained run reads the weights dataset."""
    p = tmp_path / "kdemo.yaml"
    p.write_text(f"""
name: kdemo
out_dir: {tmp_path / 'outputs'}
train:
  defaults: {{epochs: 1}}
  runs:
    convnext: {{arch: test_convnext, pretrained: true}}
    resnet: {{arch: test_resnet}}
ensemble: {{}}
kaggle:
  internet: false
  weights_dataset: {WEIGHTS}
  retries: 2
  backoff: 0.5
  poll_interval: 7
  gpus_per_session: 1
""")
    return load_plan(p)


def ref(run, prefix="roadtop-kdemo"):
    """Kernel ref of a run of the kdemo plan."""
    return f"{USER}/{prefix}-{run.replace('/', '-').replace('_', '-')}"


def params_of(text):
    """(notebook, its injected parameters as a dict) of a pushed notebook's text."""
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    cell = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(cell) == 1
    ns = {}
    exec(cell[0].source, {}, ns)  # noqa: S102 - the parameters cell papermill wrote
    return nb, ns


def push_all(plan, fake, **kw):
    """Push the trains, let them COMPLETE, push the ensemble, let it COMPLETE; returns the log lines."""
    lines = []
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("out", io.StringIO())
    assert flow.push(plan, log=lines.append, **kw) == 0
    for run in ("train/convnext", "train/resnet"):
        fake.set_statuses(ref(run), "COMPLETE")
    assert flow.push(plan, log=lines.append, **kw) == 0
    fake.set_statuses(ref("ensemble"), "COMPLETE")
    return lines


def code_competition(plan):
    """`plan` reloaded with a `predict:` section and kaggle.code_competition true: what a code competition runs."""
    src = plan.source
    src.write_text(src.read_text() + "predict: {}\n")
    new = load_plan(src)
    new.kaggle["code_competition"] = True
    return new
