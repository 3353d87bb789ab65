"""Run a Python script where Ray's traffic cannot leave the machine: inside a network namespace whose only
interface is loopback (``unshare -n``, then ``ip link set lo up``). Ray binds its servers to the machine's
interface address whatever it is told; there it can only bind to 127.0.0.1. Every test that starts Ray goes
through :func:`run_isolated`; the scripts begin with :data:`GUARD`, which refuses to go on with any other
interface present."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

__all__ = ["GUARD", "isolation", "run_isolated"]

# the first lines of every script run here: no interface but loopback, or the script stops before importing Ray
GUARD = textwrap.dedent("""
    import socket
    _ifaces = [name for _, name in socket.if_nameindex()]
    if _ifaces != ["lo"]:
        raise SystemExit(f"refusing to start Ray: interfaces {_ifaces}, not loopback alone")
""")


@functools.lru_cache(maxsize=1)
def isolation() -> tuple[list[str] | None, str]:
    """(the command prefix that enters a fresh loopback-only namespace, or None; why not)."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return None, f"{tool} not found (apt-get install util-linux iproute2)"
    for flags in (["-n"], ["-r", "-n"]):  # as root; else in a user namespace of its own
        prefix = ["unshare", *flags, "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
        probe = subprocess.run([*prefix, sys.executable, "-c", GUARD], capture_output=True, text=True)
        if probe.returncode == 0:
            return prefix, ""
    return None, f"no loopback-only network namespace here (unshare: {probe.stderr.strip()[-200:]})"


def run_isolated(script: str | Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess:
    """Run the Python file ``script`` with ``args`` inside a loopback-only network namespace; stdout and stderr
    captured. Raises RuntimeError when no such namespace can be made (the caller skips)."""
    prefix, why = isolation()
    if prefix is None:
        raise RuntimeError(why)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0", **(env or {})}
    return subprocess.run([*prefix, sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)
