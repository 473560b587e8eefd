"""What the machine computes natively: CPU extensions, oneDNN, bfloat16 GPUs.

Read by the precision choice (`--mixed_precision=auto`) and by the MSCAN
stages, which pick the convolution op that has a gradient here.
"""

from __future__ import annotations

import functools

# /proc/cpuinfo flags of the x86 extensions that compute in bfloat16.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU in `cpuinfo`; empty where it cannot be read
    (macOS, Windows, a container without /proc)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_computes_bfloat16(flags: frozenset[str] | set[str] | None = None) -> bool:
    """True when the CPU has AVX512_BF16 or AMX-BF16."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_CPU_FLAGS)


@functools.lru_cache(maxsize=None)
def onednn_enabled() -> bool:
    """Whether TensorFlow runs its CPU convolutions through oneDNN.

    TF turns oneDNN on by itself only on CPUs with AVX512/AMX (or with
    TF_ENABLE_ONEDNN_OPTS=1 set before it loads). An unknown answer reads as
    False, which makes the callers take the path that works everywhere.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


def gpu_computes_bfloat16() -> bool:
    """True when every visible GPU has compute capability 8.0 or more (Ampere on)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return False
    for gpu in gpus:
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if not capability or tuple(capability) < (8, 0):
            return False
    return True
