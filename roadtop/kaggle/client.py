"""Calls to Kaggle through the official `kaggle` client: credentials, retries with backoff, one-line errors."""

import io
import json
import os
import sys
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import requests
import urllib3

with redirect_stdout(io.StringIO()):  # `import kaggle` logs in at once and prints a page-long login banner
    from kaggle.api.kaggle_api_extended import KaggleApi  # when there are no credentials: one line is ours
from kagglesdk import get_access_token_from_env
from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

from ..clock import utc_text
from ..errors import RoadtopError
from .settings import KaggleSettings

__all__ = ["KaggleCallError", "Quota", "api_username", "call_kaggle", "connect", "gpu_quota", "kaggle_json_problem",
           "kernel_image", "kernel_version", "offline_username", "owner_username"]

NO_CREDENTIALS = ("no Kaggle credentials found: set KAGGLE_USERNAME and KAGGLE_KEY, put kaggle.json in ~/.kaggle/ "
                  "(chmod 600), or set KAGGLE_API_TOKEN (kaggle.com > Settings > API)")


class KaggleCallError(RoadtopError):
    """A Kaggle API call that failed for good; `.code` is the HTTP status (None: no answer, or a refusal)."""

    def __init__(self, message, code=None):
        """One-line message naming the run; `code` the HTTP status."""
        super().__init__(message)
        self.code = code


def _config_dir() -> str:
    """The kaggle client's config folder: KAGGLE_CONFIG_DIR, ~/.kaggle, else $XDG_CONFIG_HOME/kaggle."""
    cfg_dir = os.environ.get("KAGGLE_CONFIG_DIR") or os.path.expanduser("~/.kaggle")
    if not os.environ.get("KAGGLE_CONFIG_DIR") and not os.path.isdir(cfg_dir):
        cfg_dir = os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "kaggle")
    return cfg_dir


def offline_username() -> str:
    """The Kaggle user named by the local credentials, without a call: KAGGLE_USERNAME, kaggle.json, or the
    username that `kaggle auth login` stored beside its token (~/.kaggle/credentials.json); "" if none."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    for f in (Path(_config_dir()) / "kaggle.json", Path("~/.kaggle/credentials.json").expanduser()):
        try:
            user = json.loads(f.read_text()).get("username") or ""
        except (OSError, ValueError, AttributeError):
            continue
        if user:
            return user
    return ""


def owner_username() -> str:
    """The Kaggle user of the local credentials: offline_username(), else, when only an access token is there
    (KAGGLE_API_TOKEN, ~/.kaggle/access_token: it does not name its user), Kaggle's answer to one IntrospectToken
    call; "" when there are no credentials."""
    user = offline_username()
    if user or not get_access_token_from_env()[0]:
        return user
    return api_username(connect())


def kaggle_json_problem(path) -> str:
    """Why the kaggle.json at `path` cannot log in (not JSON, not a mapping, no username or key); "" if it is fine
    or absent."""
    f = Path(path)
    fix = "download a new one from kaggle.com > Settings > API (Create New Token) and put it there, chmod 600"
    if not f.exists():
        return ""
    try:
        creds = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else "not valid JSON"
        return f"{f} is there but cannot be read ({why}): {fix}"
    if not isinstance(creds, dict):
        return f"{f} is there but is not a JSON object with username and key: {fix}"
    lack = [k for k in ("username", "key") if not creds.get(k)]
    if lack:
        return f"{f} is there but has no {' and no '.join(lack)}: {fix}"
    return ""


def connect():
    """An authenticated `KaggleApi`: KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json."""
    api = KaggleApi()
    cfg_dir = _config_dir()
    api.config_dir, api.config = cfg_dir, os.path.join(cfg_dir, "kaggle.json")  # the client's rule, now
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            api.authenticate()
    except (SystemExit, ValueError, AttributeError, TypeError) as e:  # how the client meets a broken kaggle.json
        problem = kaggle_json_problem(api.config)
        if problem or isinstance(e, SystemExit):
            raise RoadtopError(problem or NO_CREDENTIALS) from None
        raise
    except requests.RequestException as e:
        code, msg = _http_error(e)
        raise KaggleCallError(f"kaggle: checking the credentials failed ({code or 'no answer'}: {msg})",
                              code) from None
    if buf.getvalue().strip():
        print(buf.getvalue().strip(), file=sys.stderr)  # e.g. the client's "key readable by others" warning
    return api


def api_username(api) -> str:
    """The user the credentials belong to."""
    return (getattr(api, "config_values", None) or {}).get("username", "")


def _kernel_metadata(api, ref: str):
    """Kaggle's metadata of kernel `ref` (GetKernel: ApiKernelMetadata), None when it does not exist."""
    owner, slug = ref.split("/", 1)
    req = ApiGetKernelRequest()
    req.user_name, req.kernel_slug = owner, slug
    try:
        with api.build_kaggle_client() as kaggle:
            resp = kaggle.kernels.kernels_api_client.get_kernel(req)
    except requests.HTTPError as e:
        if e.response is not None and e.response.status_code == 404:
            return None
        raise
    return resp.metadata


def kernel_version(api, ref: str):
    """The current version number of kernel `ref` on Kaggle (GetKernel), None when it does not exist."""
    meta = _kernel_metadata(api, ref)
    return getattr(meta, "current_version_number", None) if meta else None


def kernel_image(api, ref: str) -> str:
    """The Docker image kernel `ref` runs on (GetKernel's docker_image), "" when Kaggle names none."""
    meta = _kernel_metadata(api, ref)
    return (getattr(meta, "docker_image", "") or "") if meta else ""


@dataclass(frozen=True)
class Quota:
    """The account's weekly GPU quota as Kaggle reports it: hours left, hours a week, when it refreshes."""

    left_h: float
    total_h: float
    refresh: datetime | None = None

    def refresh_text(self) -> str:
        """When the quota refreshes, as 'YYYY-MM-DD HH:MM UTC' (or 'unknown')."""
        return utc_text(self.refresh)


def gpu_quota(api, st=None, log=print, sleep=time.sleep) -> Quota | None:
    """The weekly GPU quota left (the client's quota_view, GetAcceleratorQuotaStatistics), None when Kaggle
    reports none."""
    resp = call_kaggle(api.quota_view, run="kaggle", what="reading the weekly GPU quota", st=st, log=log,
                       sleep=sleep)
    q = getattr(resp, "gpu_quota", None)
    if q is None or q.total_time_allowed is None:
        return None
    used = q.time_used.total_seconds() / 3600 if q.time_used is not None else 0.0
    total = q.total_time_allowed.total_seconds() / 3600
    refresh = resp.quota_refresh_time
    if refresh is not None and refresh.utcoffset() is None:  # the SDK's UTC times carry no zone (as quota_view_cli)
        refresh = refresh.replace(tzinfo=timezone.utc)
    return Quota(max(0.0, total - used), total, refresh)


def _http_error(e):
    """(HTTP status or None, server message) of an exception raised by the kaggle client."""
    err = e
    for _ in range(5):  # the client re-raises some HTTP errors as ValueError: look behind them
        if err is None or isinstance(err, requests.HTTPError):
            break
        err = err.__context__
    if isinstance(err, requests.HTTPError) and err.response is not None:
        try:
            msg = err.response.json().get("message") or err.response.reason
        except ValueError:
            msg = err.response.reason or str(err)
        return err.response.status_code, msg
    return None, (str(e).splitlines() or [type(e).__name__])[0]


def _transient(e) -> bool:
    """True for errors a retry can cure: no connection, timeouts."""
    return isinstance(e, (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError,
                          ConnectionError))


def _retry_after(e):
    """Seconds asked for by the Retry-After header of the HTTP error behind `e`, or None."""
    try:
        return max(0.0, float(e.response.headers.get("Retry-After")))
    except (AttributeError, TypeError, ValueError):
        return None


def call_kaggle(fn, *args, run: str, what: str, st=None, hint="", sleep=time.sleep, log=print, recover=None,
                **kw):
    """`fn(*args, **kw)`, retried with exponential backoff (or Retry-After) on 429/5xx/no answer; any other
    failure is a KaggleCallError whose one line names the run, what failed and what to do (`hint`, a str or
    {403: ..., 404: ...}). `recover(code)`, asked after a 5xx or no answer (the call may have been done), returns
    the call's result if it was, else None: then it is retried."""
    st = st or KaggleSettings()
    for attempt in range(st.retries + 1):
        try:
            return fn(*args, **kw)
        except Exception as e:
            code, msg = _http_error(e)
            if code is None and not _transient(e):
                if isinstance(e, (ValueError, OSError)):  # the client's own checks, e.g. a bad metadata file
                    raise KaggleCallError(f"{run}: {what} failed: {msg}") from None
                raise
            if recover is not None and (code is None or code >= 500):
                done = recover(code)
                if done is not None:
                    return done
            if (code is None or code == 429 or code >= 500) and attempt < st.retries:
                delay = _retry_after(e)
                delay = min(300.0, st.backoff * 2**attempt if delay is None else delay)
                log(f"{run}: Kaggle answered {code or 'nothing'} to {what}; "
                    f"retry {attempt + 1}/{st.retries} in {delay:.0f} s")
                sleep(delay)
                continue
            raise KaggleCallError(_explain(code, msg, run, what, hint, st.retries + 1), code) from None
    raise AssertionError("unreachable")


def _explain(code, msg, run, what, hint, tries) -> str:
    """One line for a failed Kaggle call."""
    head = f"{run}: {what} failed"
    if isinstance(hint, dict):
        hint = hint.get(code, "")
    if code == 401:
        return (f"{head}: Kaggle rejected the credentials (401 {msg}): check KAGGLE_USERNAME/KAGGLE_KEY, "
                "~/.kaggle/kaggle.json or KAGGLE_API_TOKEN")
    if code == 403:
        return f"{head}: Kaggle refused access (403 {msg}): {hint or 'check that this account may use it'}"
    if code == 404:
        return f"{head}: Kaggle found nothing (404 {msg}): {hint or 'check the name'}"
    if code is None or code == 429 or code >= 500:
        return (f"{head}: Kaggle still answered {code or 'nothing'} ({msg}) after {tries} tries: "
                "rerun the same command later (local files are unchanged)")
    return f"{head}: Kaggle answered {code} ({msg})"
