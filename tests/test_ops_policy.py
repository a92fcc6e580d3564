"""The CUDA ops' implementation policy (auto / ref / cuda, what a failed build means) and the
lazy, cached, lock-safe build (src/ops/policy.py, src/ops/build.py), with the build faked."""
import threading
import time
import types
import warnings

import pytest
import torch

from src.ops import bias_act as ba
from src.ops import build, policy
from src.ops import upfirdn2d as ufd
from src.utils.errors import UserError
from tests.test_ops import _fresh_policy  # noqa: F401  (autouse: clean settings, a private build cache)

_FAKE_CUDA = types.SimpleNamespace(is_cuda=True)


def test_configure_validates_and_env(monkeypatch):
    assert policy.get_config() == {"impl": "auto", "on_build_failure": "error", "lock_timeout": 600.0}
    with pytest.raises(UserError, match="impl"):
        policy.configure(impl="fast")
    with pytest.raises(UserError, match="on_build_failure"):
        policy.configure(on_build_failure="ignore")
    assert policy.configure(impl="ref", lock_timeout=5)["impl"] == "ref"
    policy.reset()
    monkeypatch.setenv("LGFA_OPS_IMPL", "cuda")
    monkeypatch.setenv("LGFA_OPS_ON_BUILD_FAILURE", "fallback")
    assert policy.get_config()["impl"] == "cuda"
    assert policy.get_config()["on_build_failure"] == "fallback"
    policy.reset()
    monkeypatch.setenv("LGFA_OPS_IMPL", "bogus")
    with pytest.raises(UserError, match="LGFA_OPS_IMPL"):
        policy.get_config()


def _count_builds(monkeypatch, result):
    calls = []

    def fake_get_plugin(lock_timeout):
        calls.append(lock_timeout)
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr(build, "get_plugin", fake_get_plugin)
    return calls


def test_cpu_tensors_always_use_ref_without_building(monkeypatch):
    calls = _count_builds(monkeypatch, AssertionError("must not build"))
    policy.configure(impl="cuda")
    x = torch.randn(1, 2, 4, 4)
    assert policy.resolve("cuda", x) is None
    y = ufd.upsample2d(x, ufd.setup_filter([1, 3, 3, 1]), impl="cuda")
    assert y.shape == (1, 2, 8, 8)
    assert ba.bias_act(x, act="lrelu", impl="cuda").shape == x.shape
    assert calls == []


def test_ref_policy_never_builds(monkeypatch):
    calls = _count_builds(monkeypatch, AssertionError("must not build"))
    policy.configure(impl="ref")
    assert policy.resolve("auto", _FAKE_CUDA) is None
    assert calls == []


def test_build_failure_fallback_warns_once(monkeypatch):
    calls = _count_builds(monkeypatch, build.OpsBuildError("nvcc exploded"))
    policy.configure(on_build_failure="fallback", lock_timeout=7)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            assert policy.resolve("auto", _FAKE_CUDA) is None
    assert len([w for w in rec if "nvcc exploded" in str(w.message)]) == 1
    assert calls == [7.0]  # built once, never retried


def test_build_failure_error_raises_and_does_not_retry(monkeypatch):
    calls = _count_builds(monkeypatch, build.OpsBuildError("nvcc exploded"))
    for _ in range(2):
        with pytest.raises(build.OpsBuildError, match="nvcc exploded"):
            policy.resolve("cuda", _FAKE_CUDA)
    assert len(calls) == 1


def test_build_success_returns_plugin(monkeypatch):
    sentinel = object()
    _count_builds(monkeypatch, sentinel)
    assert policy.resolve("auto", _FAKE_CUDA, None) is sentinel


def test_build_key_and_cache_dir(monkeypatch, tmp_path):
    assert build.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("LGFA_CACHE_DIR")
    assert str(build.cache_dir()).endswith(".cache/lgfa/torch_extensions")
    k90 = build.build_key("90")
    assert k90 == build.build_key("90") and k90 != build.build_key("80") and len(k90) == 16


def test_stale_lock_times_out_with_message(monkeypatch):
    monkeypatch.setattr(build, "_compile", lambda *a: pytest.fail("must not compile while locked"))
    name = f"lgfa_ops_{build.build_key('90')}"
    lock = build.cache_dir() / f"{name}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("pid=1 host=gone\n")
    t0 = time.monotonic()
    with pytest.raises(build.OpsBuildError) as err:
        build.build_extension(arch="90", lock_timeout=0.3)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert str(lock) in msg and "delete" in msg and "\n" not in msg


def test_build_lock_serialises_and_cleans_up(monkeypatch):
    order = []

    def fake_compile(name, build_dir, arch, verbose):
        order.append(("start", threading.current_thread().name))
        time.sleep(0.2)
        order.append(("end", threading.current_thread().name))
        return name

    monkeypatch.setattr(build, "_compile", fake_compile)
    key = build.build_key("90")
    stale_baton = build.cache_dir() / f"lgfa_ops_{key}" / "lock"
    stale_baton.parent.mkdir(parents=True)
    stale_baton.write_text("")
    results = []
    threads = [threading.Thread(target=lambda: results.append(build.build_extension(arch="90", lock_timeout=10)),
                                name=f"rank{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [f"lgfa_ops_{key}"] * 2
    assert [o[0] for o in order] == ["start", "end", "start", "end"]  # never overlapping
    assert not (build.cache_dir() / f"lgfa_ops_{key}.lock").exists()
    assert not stale_baton.exists()  # torch's stale baton removed while we hold our lock


def test_a_module_built_under_the_key_is_imported_without_compiling(monkeypatch):
    """A copied cache (another machine of the same kind) skips the compile; a file that does not
    import is built again."""
    name = f"lgfa_ops_{build.build_key('90')}"
    built = build.cache_dir() / name / f"{name}.so"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"\x7fELF")
    sentinel, imported = object(), []

    def fake_import(n, path):
        imported.append((n, path))
        return sentinel

    monkeypatch.setattr(build, "_import_built", fake_import)
    monkeypatch.setattr(build, "_compile", lambda *a: pytest.fail("must not compile a built module"))
    assert build.build_extension(arch="90", lock_timeout=1) is sentinel
    assert imported == [(name, built)]

    def broken(n, path):
        raise ImportError("undefined symbol")

    monkeypatch.setattr(build, "_import_built", broken)
    monkeypatch.setattr(build, "_compile", lambda n, d, a, v: ("compiled", n))
    assert build.build_extension(arch="90", lock_timeout=1) == ("compiled", name)
    real = build._load_built
    assert real(name, built.parent / "elsewhere") is None  # nothing built there


def test_build_error_is_one_line(monkeypatch):
    def boom(*a):
        raise RuntimeError("Error building extension 'x': [1/3] nvcc ...\nfoo.cu(3): error: bad thing\nmore")

    monkeypatch.setattr(build, "_compile", boom)
    with pytest.raises(build.OpsBuildError) as err:
        build.build_extension(arch="90", lock_timeout=1)
    assert "foo.cu(3): error: bad thing" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value.__cause__, RuntimeError)
