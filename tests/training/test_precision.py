"""--mixed_precision=auto: bfloat16 only where the hardware computes it."""

import pytest

from mgcam_tf.errors import ConfigError
from mgcam_tf import hardware
from mgcam_tf.training import precision


def test_auto_follows_the_cpu_flags_and_the_gpu():
    assert precision.resolve_precision("auto", {"avx2", "fma"}, has_bf16_gpu=False) == "float32"
    assert precision.resolve_precision("auto", {"avx512f", "avx512_bf16"},
                                       has_bf16_gpu=False) == "mixed_bfloat16"
    assert precision.resolve_precision("auto", {"amx_bf16"}, has_bf16_gpu=False) == "mixed_bfloat16"
    assert precision.resolve_precision("auto", {"avx2"}, has_bf16_gpu=True) == "mixed_bfloat16"
    # A named policy is kept as it is, whatever the hardware.
    assert precision.resolve_precision("mixed_bfloat16", {"avx2"}, False) == "mixed_bfloat16"
    with pytest.raises(ConfigError, match="bfloat8"):
        precision.resolve_precision("bfloat8")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert hardware.cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert hardware.cpu_computes_bfloat16(hardware.cpu_flags(str(cpuinfo)))
    assert hardware.cpu_flags(str(tmp_path / "absent")) == set()   # no /proc: no flags
