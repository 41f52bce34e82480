"""A fake Kaggle API on 127.0.0.1 for the real `kaggle` client: records requests, answers, fails on cue."""

import base64
import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["FakeKaggle", "Recorded"]


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
    one repeats; RUNNING when unscripted), `outputs[ref]` (file name -> bytes), `logs[ref]`, `datasets` (refs
    that exist); `fail(method, code)` queues error answers. `requests` records everything, in order.
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
        self.datasets = set()
        self.uploads = {}
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
    def fail(self, method, code, times=1, message=None, headers=None):
        """Answer the next `times` calls of RPC `method` (e.g. 'SaveKernel') with HTTP `code`."""
        for _ in range(times):
            self._faults[method].append((code, message or f"fake error {code}", headers or {}))

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
            fault = self._faults[method].popleft() if method and self._faults[method] else None
        if fault:
            code, message, headers = fault
            return self._send(h, code, {"code": code, "message": message}, headers)
        if verb == "GET" and parts[0] == "download":
            data = self.outputs["/".join(parts[1:3])].get("/".join(parts[3:]))
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

    def _rpc_SaveKernel(self, p):
        ref = p["slug"]
        with self._lock:
            self.versions[ref] += 1
            v = self.versions[ref]
        return 200, {"ref": f"/code/{ref}", "url": f"{self.url}/code/{ref}", "versionNumber": v, "error": ""}

    def _kref(self, p):
        return f"{p.get('userName')}/{p.get('kernelSlug')}"

    def _rpc_GetKernelSessionStatus(self, p):
        ref = self._kref(p)
        if ref not in self.versions:
            return 404, {"code": 404, "message": f"kernel {ref} not found"}
        with self._lock:
            q = self.statuses[ref]
            status = q.popleft() if len(q) > 1 else q[0]
        out = {"status": status}
        if status == "ERROR":
            out["failureMessage"] = self.failure.get(ref, "Your notebook tried to allocate more memory.")
        return 200, out

    def _rpc_ListKernelSessionOutput(self, p):
        ref = self._kref(p)
        if ref not in self.versions:
            return 404, {"code": 404, "message": f"kernel {ref} not found"}
        files = [{"url": f"{self.url}/download/{ref}/{n}", "fileName": n} for n in sorted(self.outputs[ref])]
        return 200, {"files": files, "log": self.logs.get(ref, "")}

    def _rpc_CreateCodeSubmission(self, p):
        return 200, {"message": "Successfully submitted to Paddy Doctor", "ref": 4242}

    def _rpc_StartSubmissionUpload(self, p):
        return 200, {"token": "sub-token-1", "createUrl": f"{self.url}/upload/sub-token-1"}

    def _rpc_CreateSubmission(self, p):
        return 200, {"message": "Successfully submitted to Paddy Doctor", "ref": 4343}

    def _rpc_GetDatasetStatus(self, p):
        ref = f"{p.get('ownerSlug')}/{p.get('datasetSlug')}"
        if ref in self.datasets:
            return 200, {"status": "READY"}
        return 404, {"code": 404, "message": f"dataset {ref} not found"}

    def _rpc_StartBlobUpload(self, p):
        tok = f"blob-{len(self.uploads) + len(self.requests)}"
        return 200, {"token": tok, "createUrl": f"{self.url}/upload/{tok}"}

    def _rpc_CreateDataset(self, p):
        ref = f"{p.get('ownerSlug')}/{p.get('slug')}"
        self.datasets.add(ref)
        return 200, {"ref": ref, "url": f"{self.url}/datasets/{ref}", "status": "ok", "error": ""}

    def _rpc_CreateDatasetVersion(self, p):
        ref = f"{p.get('ownerSlug')}/{p.get('datasetSlug')}"
        return 200, {"ref": ref, "url": f"{self.url}/datasets/{ref}", "status": "ok", "error": ""}
