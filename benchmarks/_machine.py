"""What a benchmark report says about where it ran: the code's revision, the CPU, the versions."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any


def revision() -> str | None:
    """``git describe --always --dirty`` of the checkout omnichannel was imported from, if any."""
    import omnichannel

    root = os.path.dirname(os.path.dirname(os.path.abspath(omnichannel.__file__)))
    try:
        done = subprocess.run(
            ["git", "-C", root, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def machine() -> dict[str, Any]:
    """The revision, CPU model and count, Python and the versions of the libraries that matter."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for dist in ("omnichannel", "pluggy", "attrs", "cattrs", "aiohttp"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "revision": revision(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions,
    }
