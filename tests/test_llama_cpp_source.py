"""scripts/llama_cpp_source.py: the pruned llama.cpp tarball, from a small fake sdist.

No download: repack() is called on a tar.gz written here with the sdist's layout
(llama_cpp_python-<version>/vendor/llama.cpp/...). One member's path is longer than
ustar's 100 characters, so the sdist carries it in a PAX "path" header; the packer
must write it under llama.cpp/, not under the header's old vendor/ name (fixed in
823c77a: on the GPU machine llama.cpp's CMake missed such a file).
"""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
SDIST_TOP = "llama_cpp_python-0.3.36"
VENDOR = f"{SDIST_TOP}/vendor/llama.cpp"
PIN = {"package": "llama_cpp_python", "version": "0.3.36", "sha256": "0" * 64}

# paths under vendor/llama.cpp, kept by the pruning
LONG = "ggml/src/ggml-cuda/template-instances/" + "fattn-vec-instance-f16-f16" + "-x" * 30 + ".cu"
KEEP = [
    "CMakeLists.txt",
    "src/llama.cpp",
    "tools/llama-bench/llama-bench.cpp",
    "ggml/src/ggml-cpu/ggml-cpu.c",
    LONG,
]
# and dropped by it
DROP = [
    "models/ggml-vocab-gpt-2.gguf",
    "docs/build.md",
    "convert_hf_to_gguf.py",
    "tools/server/server.cpp",
    "ggml/src/ggml-vulkan/ggml-vulkan.cpp",
    "media/llama0-logo.png",
]


def _load_packer():
    spec = importlib.util.spec_from_file_location(
        "llama_cpp_source", ROOT / "scripts" / "llama_cpp_source.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _content(rel: str) -> bytes:
    return f"contents of {rel}\n".encode()


def _fake_sdist(path: Path) -> None:
    """A tar.gz in the sdist's layout, PAX format (as setuptools/pip write it)."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name in (SDIST_TOP, f"{SDIST_TOP}/vendor", VENDOR):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        _add_file(tar, f"{SDIST_TOP}/PKG-INFO", b"Name: llama_cpp_python\n")
        for rel in KEEP + DROP:
            _add_file(tar, f"{VENDOR}/{rel}", _content(rel))


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def test_fake_sdist_needs_a_pax_path_header(tmp_path):
    """The premise: the long member's name only fits a PAX header."""
    sdist = tmp_path / f"{SDIST_TOP}.tar.gz"
    _fake_sdist(sdist)
    assert len(f"{VENDOR}/{LONG}") > 100
    with tarfile.open(sdist, "r:gz") as tar:
        member = tar.getmember(f"{VENDOR}/{LONG}")
    assert member.pax_headers.get("path") == f"{VENDOR}/{LONG}"


def test_repack_writes_kept_files_under_llama_cpp(tmp_path):
    sdist = tmp_path / f"{SDIST_TOP}.tar.gz"
    _fake_sdist(sdist)
    out = tmp_path / "out" / "llama_cpp_src.tar.xz"
    kept, dropped, size = _load_packer().repack(sdist, out, PIN)

    with tarfile.open(out, "r:xz") as tar:
        members = tar.getmembers()
        files = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}
    names = [m.name for m in members]
    stray = [n for n in names if not PurePosixPath(n).parts[0] == "llama.cpp"]
    assert not stray, f"members outside llama.cpp/: {stray}"
    assert not [n for n in names if "vendor" in n or SDIST_TOP in n], names
    for rel in KEEP:
        assert files.get(f"llama.cpp/{rel}") == _content(rel), f"llama.cpp/{rel} missing or wrong"
    for rel in DROP:
        assert f"llama.cpp/{rel}" not in files, f"{rel} should have been pruned"
    stamp = files.get("llama.cpp/.tinynn-pin", b"").decode()
    assert stamp == "".join(f"{k}={PIN[k]}\n" for k in ("package", "version", "sha256"))
    assert (kept, dropped) == (len(KEEP), len(DROP))
    assert size == sum(len(_content(rel)) for rel in KEEP)
    assert not out.with_name(out.name + ".part").exists()

    # unpacked, every kept file sits under llama.cpp/ with its content
    dest = tmp_path / "unpacked"
    with tarfile.open(out, "r:xz") as tar:
        tar.extractall(dest, filter="data")
    assert sorted(p.name for p in dest.iterdir()) == ["llama.cpp"]
    for rel in KEEP:
        assert (dest / "llama.cpp" / rel).read_bytes() == _content(rel)
