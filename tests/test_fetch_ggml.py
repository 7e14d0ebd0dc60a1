"""native/fetch_ggml.py: the pinned ggml, from a small fake sdist (no download).

The pin names a source distribution and the folder of it that is ggml
(`subdir=vendor/llama.cpp/ggml` for llama-cpp-python). Only that folder is
extracted, regular files only (a link would point outside it); a file whose
hash is not the pin's is refused before anything is written; the stamp makes a
second run a no-op; a folder holding another pin's ggml is replaced whole (no
file of the old ggml may linger: CMake globs some folders), and a folder that
is not a fetched ggml is never deleted.
"""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP = "llama_cpp_python-0.3.36"
GGML = f"{TOP}/vendor/llama.cpp/ggml"
INSIDE = {
    "CMakeLists.txt": b"project(ggml)\n",
    "include/ggml.h": b"/* ggml.h */\n",
    "src/ggml-cpu/ggml-cpu.c": b"/* cpu */\n",
}
OUTSIDE = {
    f"{TOP}/PKG-INFO": b"Name: llama_cpp_python\n",
    f"{TOP}/vendor/llama.cpp/CMakeLists.txt": b"project(llama.cpp)\n",
    f"{TOP}/vendor/llama.cpp/src/llama.cpp": b"// llama\n",
    f"{TOP}/ggml/CMakeLists.txt": b"a top-level ggml/ that is not the pinned one\n",
}


def _load():
    spec = importlib.util.spec_from_file_location("fetch_ggml", ROOT / "native" / "fetch_ggml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _fake_sdist(path: Path) -> str:
    """Writes the sdist and returns its sha256."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for rel, data in INSIDE.items():
            _add(tar, f"{GGML}/{rel}", data)
        for name, data in OUTSIDE.items():
            _add(tar, name, data)
        link = tarfile.TarInfo(f"{GGML}/src/evil-link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return _load().sha256_of(path)


def _pin(tmp_path: Path, sha256: str, subdir: str | None = "vendor/llama.cpp/ggml") -> Path:
    pin = tmp_path / "ggml.pin"
    lines = ["# a test pin", "package=llama-cpp-python", "version=0.3.36", f"sha256={sha256}"]
    if subdir is not None:
        lines.append(f"subdir={subdir}")
    pin.write_text("\n".join(lines) + "\n")
    return pin


def _files(dest: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(dest)): p.read_bytes()
        for p in sorted(dest.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def test_the_pin_names_llama_cpp_pythons_ggml():
    """native/ggml.pin and scripts/llama_cpp.pin name one sdist: our ggml is llama-bench's."""
    fetch = _load()
    ours = fetch.read_pin(ROOT / "native" / "ggml.pin")
    peer = fetch.read_pin(ROOT / "scripts" / "llama_cpp.pin")
    assert ours["subdir"] == "vendor/llama.cpp/ggml", ours
    assert {k: ours[k] for k in ("package", "version", "sha256")} == peer, (ours, peer)


def test_extracts_only_the_pinned_folder(tmp_path, monkeypatch):
    fetch = _load()
    sdist = tmp_path / f"{TOP}.tar.gz"
    sha = _fake_sdist(sdist)
    monkeypatch.setattr(fetch, "PIN_FILE", _pin(tmp_path, sha))
    dest = tmp_path / "third_party" / "ggml"
    assert fetch.main(["--dest", str(dest), "--sdist", str(sdist)]) == 0
    got = _files(dest)
    want = {**INSIDE, fetch.STAMP: f"{sha}\n".encode()}
    assert got == want, f"extracted {sorted(got)}, expected {sorted(want)}"


def test_hash_mismatch_writes_nothing(tmp_path, monkeypatch):
    fetch = _load()
    sdist = tmp_path / f"{TOP}.tar.gz"
    _fake_sdist(sdist)
    monkeypatch.setattr(fetch, "PIN_FILE", _pin(tmp_path, "0" * 64))
    dest = tmp_path / "ggml"
    with pytest.raises(SystemExit, match="sha256 mismatch"):
        fetch.main(["--dest", str(dest), "--sdist", str(sdist)])
    assert not dest.exists()


def test_missing_folder_is_an_error(tmp_path, monkeypatch):
    fetch = _load()
    sdist = tmp_path / f"{TOP}.tar.gz"
    sha = _fake_sdist(sdist)
    monkeypatch.setattr(fetch, "PIN_FILE", _pin(tmp_path, sha, subdir="vendor/whisper.cpp/ggml"))
    with pytest.raises(SystemExit, match="no vendor/whisper.cpp/ggml/ folder"):
        fetch.main(["--dest", str(tmp_path / "ggml"), "--sdist", str(sdist)])


@pytest.mark.parametrize("subdir", ["../ggml", "/abs/ggml", ""])
def test_bad_subdir_is_refused(tmp_path, subdir):
    sdist = tmp_path / f"{TOP}.tar.gz"
    _fake_sdist(sdist)
    with pytest.raises(SystemExit, match="bad subdir"):
        _load().extract_ggml(sdist, tmp_path / "ggml", subdir)


def test_stamped_folder_is_reused_and_another_pin_replaced(tmp_path, monkeypatch):
    fetch = _load()
    sdist = tmp_path / f"{TOP}.tar.gz"
    sha = _fake_sdist(sdist)
    monkeypatch.setattr(fetch, "PIN_FILE", _pin(tmp_path, sha))
    dest = tmp_path / "ggml"
    dest.mkdir()
    (dest / "old-only.c").write_text("a file of the previous ggml\n")
    (dest / fetch.STAMP).write_text("1" * 64 + "\n")  # another pin
    fetch.main(["--dest", str(dest), "--sdist", str(sdist)])
    assert not (dest / "old-only.c").exists(), "a file of the previous pin's ggml lingers"
    assert (dest / fetch.STAMP).read_text().strip() == sha
    # the same pin again: nothing is read (the sdist may be gone)
    sdist.unlink()
    assert fetch.main(["--dest", str(dest), "--sdist", str(sdist)]) == 0
    assert _files(dest)["include/ggml.h"] == INSIDE["include/ggml.h"]


def test_unstamped_folder_is_never_deleted(tmp_path, monkeypatch):
    fetch = _load()
    sdist = tmp_path / f"{TOP}.tar.gz"
    monkeypatch.setattr(fetch, "PIN_FILE", _pin(tmp_path, _fake_sdist(sdist)))
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("not ggml\n")
    with pytest.raises(SystemExit, match="not ours to replace"):
        fetch.main(["--dest", str(dest), "--sdist", str(sdist)])
    assert (dest / "notes.txt").read_text() == "not ggml\n"
