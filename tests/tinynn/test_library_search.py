"""Which libtinynn.so is loaded (the order in tinynn/_lib.py's docstring).

The order itself is checked on folder layouts made here; then, in child
processes, a copy of the tinynn package laid out as an installation and as a
source checkout loads the library the order names. Those children link the
files of the library this process loaded, so they need no build of their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tinynn
from tinynn import _lib

PRINT_LIBRARY = "import tinynn; tinynn.Session('cpu').close(); print(tinynn.library_path())"


def _checkout(root: Path) -> Path:
    """A source checkout's layout under root; returns its package folder."""
    (root / "native").mkdir(parents=True)
    (root / "native" / "tinynn.h").touch()
    (root / "tinynn").mkdir()
    return root / "tinynn"


def test_tinynn_lib_is_the_whole_order(tmp_path):
    package = _checkout(tmp_path)
    named = tmp_path / "elsewhere" / "libtinynn.so"
    assert _lib.candidate_paths({"TINYNN_LIB": str(named)}, package) == [named]


def test_checkout_prefers_its_build(tmp_path):
    package = _checkout(tmp_path)
    assert _lib.is_source_checkout(package)
    assert _lib.candidate_paths({}, package) == [
        tmp_path / "build" / "native" / "lib" / "libtinynn.so",  # make native / cuda / test
        tmp_path / "build" / "wheel" / "lib" / "libtinynn.so",  # a plain `pip install .`
        package / "libtinynn.so",
    ]


def test_a_plain_pip_install_builds_where_a_checkout_looks():
    # `python -m gpt2` in a clone after `pip install .` imports the clone's code: it finds
    # the library that install built only while pyproject.toml's build-dir is one of these
    text = (Path(_lib.__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert any(f'build-dir = "build/{folder}"' in text for folder in _lib.CHECKOUT_BUILDS)


def test_checkout_after_a_plain_pip_install_loads_that_build(tmp_path):
    package = _checkout(tmp_path / "checkout")
    _copy_package(package, with_library=False)
    built = tmp_path / "checkout" / "build" / "wheel" / "lib"
    _link_libraries(built)
    run = _run(tmp_path / "checkout", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(built / "libtinynn.so")


def test_installed_package_uses_only_its_own_library(tmp_path):
    package = tmp_path / "site-packages" / "tinynn"
    package.mkdir(parents=True)
    (tmp_path / "site-packages" / "build" / "native" / "lib").mkdir(parents=True)
    assert not _lib.is_source_checkout(package)
    assert _lib.candidate_paths({}, package) == [package / "libtinynn.so"]


def test_this_process_loaded_the_first_existing_candidate():
    first = next(p for p in _lib.candidate_paths() if p.is_file())
    assert tinynn.library_path() == str(first)


# ---- the order in child processes, on copies of the package ----------------------------


def _copy_package(package: Path, with_library: bool) -> None:
    """tinynn's Python files into package; with_library links the loaded
    library's folder (libtinynn.so, the ggml libraries and modules) beside them."""
    package.mkdir(parents=True, exist_ok=True)
    for source in _lib.PACKAGE_DIR.glob("*.py"):
        shutil.copy(source, package / source.name)
    if with_library:
        _link_libraries(package)


def _link_libraries(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for lib in Path(tinynn.library_path()).resolve().parent.glob("*.so*"):
        (folder / lib.name).symlink_to(lib)


def _run(site: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    child_env = {k: v for k, v in os.environ.items() if k not in ("TINYNN_LIB", "PYTHONPATH")}
    child_env.update(PYTHONPATH=str(site), **env)
    return subprocess.run(
        [sys.executable, "-c", PRINT_LIBRARY],
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_installed_package_loads_the_library_beside_it(tmp_path):
    site = tmp_path / "site"
    _copy_package(site / "tinynn", with_library=True)
    _link_libraries(site / "build" / "native" / "lib")  # not a checkout: never looked at
    run = _run(site, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(site / "tinynn" / "libtinynn.so")


def test_checkout_loads_its_build_before_the_library_beside_the_package(tmp_path):
    package = _checkout(tmp_path / "checkout")
    _copy_package(package, with_library=True)
    built = tmp_path / "checkout" / "build" / "native" / "lib"
    _link_libraries(built)
    run = _run(tmp_path / "checkout", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(built / "libtinynn.so")


def test_checkout_without_a_build_loads_the_library_beside_the_package(tmp_path):
    package = _checkout(tmp_path / "checkout")
    _copy_package(package, with_library=True)
    run = _run(tmp_path / "checkout", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(package / "libtinynn.so")


def test_missing_tinynn_lib_is_an_error_even_where_a_build_exists(tmp_path):
    package = _checkout(tmp_path / "checkout")
    _copy_package(package, with_library=True)
    _link_libraries(tmp_path / "checkout" / "build" / "native" / "lib")
    missing = tmp_path / "nowhere" / "libtinynn.so"
    run = _run(tmp_path / "checkout", cwd=tmp_path, TINYNN_LIB=str(missing))
    assert run.returncode != 0
    assert "TinyNNError" in run.stderr
    assert f"Tried:\n  {missing} (missing)\nBuild it, or unset TINYNN_LIB" in run.stderr


def test_installed_package_without_its_library_says_how_to_rebuild(tmp_path):
    site = tmp_path / "site"
    _copy_package(site / "tinynn", with_library=False)
    run = _run(site, cwd=tmp_path)
    assert run.returncode != 0
    assert f"Tried:\n  {site / 'tinynn' / 'libtinynn.so'} (missing)\n" in run.stderr
    assert "pip install --force-reinstall ." in run.stderr


# ---- CUDA asked of a library built without it ------------------------------------------


@pytest.fixture
def cpu_only_library() -> None:
    if (Path(tinynn.library_path()).parent / _lib.CUDA_MODULE).is_file():
        pytest.skip("the loaded library was built with CUDA")


def test_cuda_unavailable_reason_says_how_to_get_cuda(cpu_only_library):
    reason = tinynn.cuda_unavailable_reason()
    assert reason is not None
    assert 'CMAKE_ARGS="-DGGML_CUDA=ON" pip install' in reason
    assert "make cuda" in reason


def test_cuda_session_error_says_how_to_get_cuda(cpu_only_library):
    with pytest.raises(tinynn.TinyNNError, match="CUDA is not available") as raised:
        tinynn.Session("cuda")
    assert 'CMAKE_ARGS="-DGGML_CUDA=ON" pip install' in str(raised.value)
