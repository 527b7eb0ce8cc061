"""The machine description every report carries."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys

import pytest

from runner import environment
from runner.environment import describe_environment


@pytest.fixture
def uncached():
    environment._triton.cache_clear()
    yield
    environment._triton.cache_clear()


def test_it_names_the_python_torch_cuda_runtime_and_triton():
    import torch

    described = describe_environment(sandbox_mode="bwrap")
    assert set(described) >= {
        "python",
        "platform",
        "node",
        "cpu",
        "torch",
        "cuda_runtime",
        "triton",
        "numpy",
        "gpu",
        "sandbox",
        "sandbox_limits",
    }
    assert described["torch"].startswith(torch.__version__)
    assert described["cuda_runtime"] == torch.version.cuda  # None on a CPU build
    assert described["cpu"]["count"] >= 1
    assert described["sandbox"] == "bwrap"


def test_triton_comes_from_the_package_metadata(uncached, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(importlib.metadata, "version", lambda name: f"{name} 3.4.0")
    assert environment._triton() == "triton 3.4.0"


def test_triton_is_null_when_it_cannot_be_imported(uncached, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert environment._triton() is None


def test_triton_reports_the_version_of_an_importable_triton(uncached, tmp_path, monkeypatch):
    # A triton without distribution metadata (as an unpacked or renamed install would be).
    package = tmp_path / "triton"
    package.mkdir()
    (package / "__init__.py").write_text('__version__ = "9.8.7"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "triton", raising=False)

    def no_metadata(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", no_metadata)
    try:
        assert environment._triton() == "9.8.7"
    finally:
        sys.modules.pop("triton", None)
