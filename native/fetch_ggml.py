"""Fetch the pinned ggml source into third_party/ggml (git-ignored), once.

ggml is not committed: we download the source distribution named in
native/ggml.pin with pip, check its sha256, and extract its ggml/ folder.
A folder already holding the pinned version is reused.

    python native/fetch_ggml.py [--dest third_party/ggml]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN_FILE = ROOT / "native" / "ggml.pin"
STAMP = ".tinynn-pin"


def read_pin(path: Path = PIN_FILE) -> dict[str, str]:
    pin = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pin[key.strip()] = value.strip()
    for key in ("package", "version", "sha256"):
        if key not in pin:
            raise SystemExit(f"{path}: missing '{key}='")
    return pin


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_sdist(pin: dict[str, str], workdir: Path) -> Path:
    # --no-binary for this one package: we want its source. Build requirements
    # stay binary so pip does not compile cmake from source to read metadata.
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        pin["package"],
        "--dest",
        str(workdir),
        f"{pin['package']}=={pin['version']}",
    ]
    print(f"{pin['package']}:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    found = sorted(workdir.glob("*.tar.gz"))
    if len(found) != 1:
        raise SystemExit(f"{pin['package']}: expected one sdist in {workdir}, found {found}")
    return found[0]


def extract_ggml(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if len(parts) >= 2 and parts[1] == "ggml":
                if m.issym() or m.islnk() or ".." in parts:
                    continue
                m.name = str(Path(*parts[2:])) if len(parts) > 2 else "."
                members.append(m)
        if not members:
            raise SystemExit(f"fetch_ggml: {sdist.name} has no ggml/ folder")
        dest.mkdir(parents=True, exist_ok=True)
        tar.extractall(dest, members=members, filter="data")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=ROOT / "third_party" / "ggml")
    parser.add_argument("--sdist", type=Path, help="use this already downloaded sdist")
    args = parser.parse_args(argv)

    pin = read_pin()
    stamp = args.dest / STAMP
    if stamp.exists() and stamp.read_text().strip() == pin["sha256"]:
        print(f"fetch_ggml: {args.dest} already holds {pin['package']} {pin['version']}")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(pin, Path(tmp))
        got = sha256_of(sdist)
        if got != pin["sha256"]:
            raise SystemExit(
                f"fetch_ggml: sha256 mismatch for {sdist.name}: expected {pin['sha256']}, got {got}"
            )
        extract_ggml(sdist, args.dest)
    stamp.write_text(pin["sha256"] + "\n")
    print(f"fetch_ggml: extracted ggml into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
