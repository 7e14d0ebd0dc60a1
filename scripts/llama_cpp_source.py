"""Pack the pinned llama.cpp source, pruned for a CUDA build of llama-bench, as one tar.xz.

llama.cpp is not committed. scripts/llama_cpp.pin names a source distribution whose
vendor/llama.cpp folder is llama.cpp; this downloads it with pip, checks its sha256, and
writes that folder (as llama.cpp/, with the pin in llama.cpp/.tinynn-pin) without what
`cmake --build ... --target llama-bench` never reads: models, docs, tests, examples, the
web UI and server, media files and the GPU backends other than CUDA. The GPU machine
unpacks and builds it with scripts/llama_bench.sh.

    python scripts/llama_cpp_source.py [--out .device/llama_cpp_src.tar.xz] [--sdist FILE]
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "native"))
from fetch_ggml import download_sdist, read_pin, sha256_of  # noqa: E402 - the same pin, download, check

PIN_FILE = ROOT / "scripts" / "llama_cpp.pin"
TOP = "llama.cpp"  # the folder name inside the tarball
# top-level entries of vendor/llama.cpp that configure and the llama-bench target never read
PRUNE_TOP = {
    *("models", "docs", "media", "benches", "conversion", "gguf-py", "tests", "examples"),
    *("scripts", "pocs", "ci", "skills", "grammars", "requirements", "licenses", "flake.nix"),
    *(".git", ".github", ".devops", ".gemini", ".pi"),
}
PRUNE_UNDER = ("tools/ui", "tools/server")  # added to the build only with LLAMA_BUILD_SERVER
# ggml backends kept: the CPU one (always built), CUDA, and BLAS (a few kB; off by default)
KEEP_BACKENDS = {"ggml-cpu", "ggml-cuda", "ggml-blas"}
PRUNE_SUFFIXES = {".mp3", ".mp4", ".wav", ".png", ".jpg", ".jpeg", ".webp", ".gif", ".pdf"}


def keep(rel: PurePosixPath) -> bool:
    """Whether a path relative to vendor/llama.cpp goes into the tarball."""
    parts = rel.parts
    if not parts or parts[0] in PRUNE_TOP or rel.suffix.lower() in PRUNE_SUFFIXES:
        return False
    if len(parts) == 1 and rel.suffix == ".py":  # the convert_*.py scripts
        return False
    if any(rel == PurePosixPath(p) or PurePosixPath(p) in rel.parents for p in PRUNE_UNDER):
        return False
    # ggml/src/ggml-<backend>/...: only the backends we keep
    if parts[:2] == ("ggml", "src") and len(parts) > 3 and parts[2].startswith("ggml-"):
        return parts[2] in KEEP_BACKENDS
    return True


def repack(sdist: Path, out: Path, pin: dict[str, str]) -> tuple[int, int, int]:
    """Write vendor/llama.cpp of `sdist`, pruned, to `out`; return (files kept, files
    dropped, bytes kept before compression)."""
    kept = dropped = size = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(sdist, "r|gz") as src, tarfile.open(tmp, "w:xz", preset=9) as dst:
        for m in src:
            parts = PurePosixPath(m.name).parts
            if len(parts) < 3 or parts[1:3] != ("vendor", "llama.cpp") or ".." in parts:
                continue
            rel = PurePosixPath(*parts[3:])
            if not (m.isfile() or m.isdir()) or not keep(rel):
                dropped += m.isfile()
                continue
            m.name = str(PurePosixPath(TOP, rel))
            # tarfile writes a PAX "path" header it read over the new name: drop it, or
            # long paths keep their old vendor/... names (llama.cpp's CMake then misses files)
            m.pax_headers = {
                k: v for k, v in m.pax_headers.items() if k not in ("path", "linkpath")
            }
            m.uid = m.gid = 0
            m.uname = m.gname = ""
            if m.isfile():
                kept, size = kept + 1, size + m.size
                dst.addfile(m, src.extractfile(m))
            else:
                dst.addfile(m)
        stamp = "".join(f"{k}={pin[k]}\n" for k in ("package", "version", "sha256")).encode()
        info = tarfile.TarInfo(f"{TOP}/.tinynn-pin")
        info.size, info.mode = len(stamp), 0o644
        dst.addfile(info, io.BytesIO(stamp))
    if kept == 0:
        tmp.unlink()
        raise SystemExit(f"llama_cpp_source: {sdist.name} has no vendor/llama.cpp folder")
    tmp.replace(out)
    return kept, dropped, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".device" / "llama_cpp_src.tar.xz")
    parser.add_argument("--sdist", type=Path, help="use this already downloaded sdist")
    args = parser.parse_args(argv)

    pin = read_pin(PIN_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(pin, Path(tmp))
        got = sha256_of(sdist)
        if got != pin["sha256"]:
            raise SystemExit(
                f"llama_cpp_source: sha256 mismatch for {sdist.name}: "
                f"expected {pin['sha256']}, got {got}"
            )
        sdist_mb = sdist.stat().st_size / 1e6
        kept, dropped, size = repack(sdist, args.out, pin)
    mb = args.out.stat().st_size / 1e6
    print(
        f"llama_cpp_source: {pin['package']} {pin['version']} sdist {sdist_mb:.1f} MB -> "
        f"{kept} files ({dropped} dropped), {size / 1e6:.1f} MB -> {args.out} {mb:.2f} MB (xz -9)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
