"""The INT8 weight format follows the CPU's integer kernels: recorded /proc/cpuinfo feature sets of each x86
class this project meets (no emulator runs another class here), from the flags line to the scheme."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine_build.quantize import SCHEMES, choose_scheme
from inference.gate import cpu_identity, int8_kernel_class, u8s8_saturates

# Flags lines as the kernel prints them (trimmed to what matters plus neighbours, in the kernel's order).
RECORDED = {
    # AMD EPYC (family 25) as these cloud machines show it: AVX2, no AVX-512, no VNNI.
    "AMD EPYC": (
        "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
        "syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid "
        "extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes "
        "xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch "
        "osvw topoext invpcid_single ssbd ibrs ibpb stibp vmmcall fsgsbase bmi1 avx2 smep bmi2 erms invpcid "
        "rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr rdpru "
        "wbnoinvd arat npt nrip_save umip pku ospke vaes vpclmulqdq rdpid fsrm",
        "avx2",
    ),
    # Intel Xeon, Haswell/Broadwell generation: AVX2 only, the same saturating kernels.
    "Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz": (
        "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
        "ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid pni "
        "pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx "
        "f16c rdrand hypervisor lahf_lm abm 3dnowprefetch invpcid_single pti fsgsbase bmi1 hle avx2 smep "
        "bmi2 erms invpcid rtm rdseed adx xsaveopt",
        "avx2",
    ),
    # Intel Xeon Cascade Lake / AMD EPYC Genoa style: AVX-512 with VNNI.
    "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz": (
        "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss "
        "ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid "
        "tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx "
        "f16c rdrand hypervisor lahf_lm abm 3dnowprefetch invpcid_single pti fsgsbase bmi1 avx2 smep bmi2 "
        "erms invpcid mpx avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd avx512bw avx512vl "
        "xsaveopt xsavec xgetbv1 xsaves ida arat pku ospke avx512_vnni",
        "vnni",
    ),
    # A desktop Intel core (Alder Lake): no AVX-512, but AVX-VNNI (VEX-encoded VPDPBUSD).
    "12th Gen Intel(R) Core(TM) i7-12700": (
        "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss "
        "ht syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt "
        "aes xsave avx f16c rdrand hypervisor lahf_lm abm fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed "
        "adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves avx_vnni umip gfni vaes",
        "vnni",
    ),
    # Intel Xeon Sapphire Rapids: AMX tiles with int8 and bf16.
    "Intel(R) Xeon(R) Platinum 8488C": (
        "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss "
        "ht syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt "
        "aes xsave avx f16c rdrand hypervisor lahf_lm abm avx2 smep bmi2 avx512f avx512dq avx512cd avx512bw "
        "avx512vl avx_vnni avx512_bf16 avx512_vnni avx512_fp16 amx_bf16 amx_tile amx_int8",
        "amx",
    ),
}


def _cpuinfo(tmp_path: Path, model: str, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(
        "".join(f"processor\t: {i}\nmodel name\t: {model}\nflags\t\t: {flags}\n\n" for i in range(2))
    )
    return path


@pytest.mark.parametrize("model", sorted(RECORDED))
def test_each_recorded_cpu_gets_the_scheme_of_its_class(tmp_path: Path, model: str) -> None:
    flags_line, kernels = RECORDED[model]
    name, flags = cpu_identity(_cpuinfo(tmp_path, model, flags_line))
    assert name == model
    assert int8_kernel_class(flags) == kernels
    scheme, why = choose_scheme("auto", flags)
    if kernels == "avx2":
        # uint8 x int8 pairs saturate in int16 here: the guarded format, and the record says why.
        assert u8s8_saturates(flags) and scheme == "s8-guarded" and "no VNNI or AMX" in why
    else:
        assert not u8s8_saturates(flags) and scheme == "s8" and kernels in why


def test_an_explicit_scheme_wins_and_an_unknown_one_is_refused() -> None:
    assert all(choose_scheme(s, ("avx2",)) == (s, "asked for") for s in SCHEMES)
    with pytest.raises(ValueError, match="unknown weight scheme"):
        choose_scheme("int4", ("avx2",))
