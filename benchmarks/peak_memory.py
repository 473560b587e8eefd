"""Peak resident memory of the running process, for the benchmarks' memory keys."""

from __future__ import annotations

import resource


def peak_gb() -> float:
    """Peak resident memory of this process in GB (1e9 bytes).

    VmHWM of /proc/self/status: unlike ru_maxrss, it is not inherited from the
    parent process through fork + exec, so a benchmark's child reports its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
