"""Which Keras dtype policy a training runs under: `--mixed_precision=auto`.

mixed_bfloat16 is about twice as fast as float32 where the hardware computes
in bfloat16 (x86 CPUs with AVX512_BF16 or AMX, NVIDIA GPUs from Ampere on).
Elsewhere bfloat16 is emulated and slower than float32, so `auto` falls back
to float32 there. The choice is resolved once, before the model is built, and
the resolved name is what the run directory records.
"""

from __future__ import annotations

from mgcam_tf import hardware
from mgcam_tf.conventions import PRECISIONS
from mgcam_tf.errors import ConfigError

AUTO = "auto"


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
        has_bf16_gpu = hardware.gpu_computes_bfloat16()
    native = has_bf16_gpu or hardware.cpu_computes_bfloat16(cpu_flag_set)
    return "mixed_bfloat16" if native else "float32"
