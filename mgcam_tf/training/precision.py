"""Which Keras dtype policy a training runs under: `--mixed_precision=auto`.

mixed_bfloat16 is about twice as fast as float32 where the hardware computes
in bfloat16 (x86 CPUs with AVX512_BF16 or AMX, NVIDIA GPUs from Ampere on).
Elsewhere bfloat16 is emulated and slower than float32, so `auto` falls back
to float32 there. The choice is resolved once, before the model is built, and
the resolved name is what the run directory records.
"""

from __future__ import annotations

from mgcam_tf.conventions import PRECISIONS
from mgcam_tf.errors import ConfigError

AUTO = "auto"
# /proc/cpuinfo flags of the x86 extensions that compute in bfloat16.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The feature flags of the first CPU in `cpuinfo`; empty where it cannot be read
    (macOS, Windows, a container without /proc)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def cpu_computes_bfloat16(flags: set[str] | None = None) -> bool:
    """True when the CPU has AVX512_BF16 or AMX-BF16."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_CPU_FLAGS)


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


def resolve_precision(name: str, cpu_flag_set: set[str] | None = None,
                      has_bf16_gpu: bool | None = None) -> str:
    """One of PRECISIONS for `name` (a PRECISIONS entry or "auto").

    auto: mixed_bfloat16 where the device trains in bfloat16 natively (a
    bfloat16 GPU if there is one, else the CPU), float32 elsewhere.
    """
    if name in PRECISIONS:
        return name
    if name != AUTO:
        raise ConfigError(f"mixed_precision must be one of {PRECISIONS + (AUTO,)}, got {name!r}")
    if has_bf16_gpu is None:
        has_bf16_gpu = gpu_computes_bfloat16()
    if has_bf16_gpu:
        return "mixed_bfloat16"
    return "mixed_bfloat16" if cpu_computes_bfloat16(cpu_flag_set) else "float32"
