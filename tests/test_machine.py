"""top/evaluation/machine.py names the CPU beside every figure, and says when torch's kernels were limited."""

from top.runtime import machine


def test_the_description_names_the_cpu_and_a_kernel_limit(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    plain = machine.describe()
    assert plain["cpu"] == machine.cpu_name() and plain["cpu"] and plain["limited_to"] == {}
    assert plain["cores"] >= 1 and plain["cpu_vector_extension"] in ("avx512", "avx2", "other")
    assert "limited" not in machine.one_line(plain)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    limited = machine.describe()
    assert limited["limited_to"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert "limited by ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" in machine.one_line(limited)
