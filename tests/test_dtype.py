"""The backbone dtype is chosen by what the hardware computes fast, not by what oneDNN can emulate."""
from __future__ import annotations

import pytest
import torch

from latentcomm.model import backbone


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch):
    monkeypatch.delenv(backbone.DTYPE_ENV, raising=False)
    backbone._cpu_choice.cache_clear()
    yield
    backbone._cpu_choice.cache_clear()


def _probe_must_not_run() -> bool:
    raise AssertionError("the timed probe runs only where the CPU flags are unreadable")


@pytest.mark.parametrize("flags, dtype", [
    ({"avx2", "avx512f", "avx512bw"}, torch.float32),          # AVX-512 without BF16: oneDNN emulates bf16
    ({"avx2", "fma"}, torch.float32),
    ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),
    ({"avx2", "amx_tile", "amx_bf16"}, torch.bfloat16),
    ({"fp", "asimd", "bf16"}, torch.bfloat16),                 # aarch64 Features with BF16
])
def test_cpu_dtype_follows_the_capability(monkeypatch, flags, dtype) -> None:
    monkeypatch.setattr(backbone, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(backbone, "_bf16_matmul_is_faster", _probe_must_not_run)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    choice = backbone.choose_dtype("cpu")
    assert choice.dtype == dtype
    assert backbone.default_dtype("cpu") == dtype
    assert ("natively" in choice.reason) == (dtype == torch.bfloat16)


@pytest.mark.parametrize("faster, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_unreadable_flags_fall_back_to_one_timed_probe(monkeypatch, faster, dtype) -> None:
    calls = []
    monkeypatch.setattr(backbone, "cpu_flags", lambda: None)
    monkeypatch.setattr(backbone, "_bf16_matmul_is_faster", lambda: calls.append(1) or faster)
    assert backbone.choose_dtype("cpu").dtype == dtype
    assert backbone.choose_dtype(torch.device("cpu")).dtype == dtype
    assert len(calls) == 1, "the probe's answer is cached for the process"
    assert "timed" in backbone.choose_dtype("cpu").reason


def test_timed_probe_runs() -> None:
    assert backbone._bf16_matmul_is_faster(size=64, repeats=2) in (True, False)


def test_environment_overrides_and_is_validated(monkeypatch) -> None:
    monkeypatch.setenv(backbone.DTYPE_ENV, "fp32")
    assert backbone.choose_dtype("cpu").dtype == torch.float32
    monkeypatch.setenv(backbone.DTYPE_ENV, "BF16")
    assert backbone.choose_dtype("cpu").dtype == torch.bfloat16
    monkeypatch.setenv(backbone.DTYPE_ENV, "float64")
    with pytest.raises(ValueError, match="LATENTCOMM_DTYPE"):
        backbone.choose_dtype("cpu")


def test_this_machines_flags_are_read() -> None:
    flags = backbone.cpu_flags()
    assert flags is None or len(flags) > 0


def test_info_prints_the_choice_and_its_reason(capsys) -> None:
    from latentcomm.cli.main import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    choice = backbone.choose_dtype(backbone.default_device())
    assert choice.reason in out
    assert str(choice.dtype).removeprefix("torch.") in out
