"""Fetch the pinned ggml source into third_party/ggml (git-ignored), once.

ggml is not committed: we download the source distribution named in
native/ggml.pin with pip, check its sha256, and extract the folder the pin's
`subdir=` names (ggml/ when it names none) and nothing else. A folder already
holding the pinned version (its .tinynn-pin stamp holds the sha256) is reused;
one holding another pin is emptied first, so no file of the old ggml lingers.

    python native/fetch_ggml.py [--dest third_party/ggml]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
PIN_FILE = ROOT / "native" / "ggml.pin"
STAMP = ".tinynn-pin"
DEFAULT_SUBDIR = "ggml"


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


def extract_ggml(sdist: Path, dest: Path, subdir: str = DEFAULT_SUBDIR) -> int:
    """Extract `subdir` (relative to the sdist's top folder) of `sdist` into `dest`,
    regular files and folders only (no links, no path leaving `dest`). Returns the
    number of files extracted."""
    want = PurePosixPath(subdir).parts
    if not want or ".." in want or PurePosixPath(subdir).is_absolute():
        raise SystemExit(f"fetch_ggml: bad subdir '{subdir}' in the pin")
    n = len(want)
    members = []
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            parts = PurePosixPath(m.name).parts
            if len(parts) <= n or parts[1 : n + 1] != want or ".." in parts:
                continue
            if not (m.isfile() or m.isdir()):
                continue
            m.name = str(PurePosixPath(*parts[n + 1 :])) if len(parts) > n + 1 else "."
            members.append(m)
        files = sum(m.isfile() for m in members)
        if files == 0:
            raise SystemExit(f"fetch_ggml: {sdist.name} has no {subdir}/ folder")
        dest.mkdir(parents=True, exist_ok=True)
        tar.extractall(dest, members=members, filter="data")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=ROOT / "third_party" / "ggml")
    parser.add_argument("--sdist", type=Path, help="use this already downloaded sdist")
    args = parser.parse_args(argv)

    pin = read_pin(PIN_FILE)
    stamp = args.dest / STAMP
    if stamp.exists() and stamp.read_text().strip() == pin["sha256"]:
        print(f"fetch_ggml: {args.dest} already holds {pin['package']} {pin['version']}")
        return 0

    subdir = pin.get("subdir", DEFAULT_SUBDIR)
    if not stamp.exists() and args.dest.exists() and any(args.dest.iterdir()):
        raise SystemExit(
            f"fetch_ggml: {args.dest} holds files but no {STAMP}: not ours to replace (remove it)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(pin, Path(tmp))
        got = sha256_of(sdist)
        if got != pin["sha256"]:
            raise SystemExit(
                f"fetch_ggml: sha256 mismatch for {sdist.name}: expected {pin['sha256']}, got {got}"
            )
        if stamp.exists():
            shutil.rmtree(args.dest)  # another pin's ggml: none of its files may stay
        files = extract_ggml(sdist, args.dest, subdir)
    stamp.write_text(pin["sha256"] + "\n")
    print(f"fetch_ggml: extracted {subdir}/ ({files} files) into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
