"""A process with no network: a sitecustomize on PYTHONPATH makes any socket to a non-loopback address raise."""

import os
from pathlib import Path

SITE = r'''
import ipaddress, socket

def _loopback(address):
    """True for a local address (IPv4/IPv6 loopback, a Unix socket, localhost)."""
    if not isinstance(address, tuple):
        return True  # a Unix socket path
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: would need DNS

def _guard(orig):
    def connect(self, address, *a):
        if not _loopback(address):
            raise OSError(f"OFFLINE: connection to {address} refused (no network in this process)")
        return orig(self, address, *a)
    return connect

socket.socket.connect = _guard(socket.socket.connect)
socket.socket.connect_ex = _guard(socket.socket.connect_ex)
_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *a, **kw):
    if host not in (None, "localhost") and not _loopback((host,)):
        raise OSError(f"OFFLINE: name lookup of {host} refused (no network in this process)")
    return _getaddrinfo(host, *a, **kw)
socket.getaddrinfo = getaddrinfo

import os
if os.environ.get("ROADTOP_OFFLINE_MARK"):
    with open(os.environ["ROADTOP_OFFLINE_MARK"], "a") as _f:
        _f.write(f"{os.getpid()}\n")
'''


def offline_env(folder, root) -> dict:
    """os.environ plus a PYTHONPATH whose sitecustomize.py (written to `folder`) blocks the network; `root` first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def offline_marker(env: dict, path) -> dict:
    """`env` whose processes append their pid to `path` when the network guard loads (proof it ran there)."""
    return {**env, "ROADTOP_OFFLINE_MARK": str(path)}
