"""Build the training corpus for the embedded default model from Debian's Python docs.

The text is the reStructuredText source of the Python 3.11 documentation, as Debian ships
it in `python3.11-doc` (`/usr/share/doc/python3.11/html/_sources/**/*.rst.txt`). It is
licensed under the Python Software Foundation License, which allows redistribution, so a
model trained on it can ship with the package.

    python scripts/prepare_corpus.py            # -> build/corpus/corpus.txt + manifest.json

Steps: `apt-get download` one pinned version of the .deb, check its sha256, extract it with
`dpkg-deb -x` into a temporary folder, turn each source file into plain prose (markup lines
that are directive noise dropped, inline roles reduced to their text, whitespace
normalized), and join the documents with `<|endoftext|>` lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

PACKAGE = "python3.11-doc"
# Tried in order. Debian replaces security versions as they are superseded, so a second
# known version (bookworm's main pool) keeps the script working a little longer.
PINNED_VERSIONS: list[tuple[str, str]] = [
    (
        "3.11.2-6+deb12u9",
        "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
    ),
    (
        "3.11.2-6+deb12u8",
        "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b",
    ),
]
SOURCES_DIR = "usr/share/doc/python3.11/html/_sources"
COPYRIGHT_FILE = "usr/share/doc/python3.11-doc/copyright"
LICENSE = (
    "Python Software Foundation License Version 2 (PSF-2.0); see LICENSE.txt next to the corpus"
)
DOC_SEPARATOR = "<|endoftext|>"
MIN_DOC_BYTES = 200  # index pages and include stubs are all markup; they teach nothing

# Directives whose whole block is navigation or build machinery, not prose.
DROP_BLOCK = {
    "index", "toctree", "highlight", "sectionauthor", "moduleauthor", "module",
    "currentmodule", "testsetup", "testcleanup", "include", "literalinclude", "image",
    "figure", "raw", "tabularcolumns", "productionlist", "audit-event", "contents",
    "only", "availability", "list-table", "csv-table", "table", "program", "testoutput",
}  # fmt: skip
# Directives whose argument is a signature or term worth keeping as a line of text.
SIGNATURE = {
    "function", "method", "class", "data", "attribute", "exception", "decorator",
    "classmethod", "staticmethod", "abstractmethod", "coroutinemethod",
    "coroutinefunction", "describe", "object", "opcode", "pdbcommand", "cmdoption",
    "option", "envvar", "decoratormethod", "awaitablemethod",
}  # fmt: skip
VERSION_NOTES = {
    "versionadded": "New in version {}.",
    "versionchanged": "Changed in version {}.",
    "deprecated": "Deprecated since version {}.",
    "deprecated-removed": "Deprecated since version {}.",
}

DIRECTIVE_RE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
COMMENT_RE = re.compile(r"^(\s*)\.\.(\s|$)")  # labels `.. _x:`, comments, substitutions
OPTION_RE = re.compile(r"^\s*:[\w-]+:(\s.*)?$")
ADORNMENT_RE = re.compile(r"^\s*([=\-*^~\"'#+`.:_])\1{2,}\s*$")
TABLE_BORDER_RE = re.compile(r"^\s*[+=\-| ]*[+=][+=\-| ]*$")
ROLE_RE = re.compile(r":(?:[\w-]+:)*([\w-]+):`([^`]{1,300})`")
LINK_RE = re.compile(r"`([^`<]+?)\s*<[^>]*>`_{1,2}")
REF_RE = re.compile(r"`([^`]+)`_{1,2}")
LITERAL_RE = re.compile(r"``([^`]{1,300}?)``")
STRONG_RE = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
EMPH_RE = re.compile(r"(?<![\w*\\])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
FOOTNOTE_RE = re.compile(r"\s*\[(?:#|\d+|\*)\w*\]_")
TITLE_TARGET_RE = re.compile(r"^(.*?)\s*<[^>]*>$")


def _role_text(match: re.Match[str]) -> str:
    """`:func:`~os.path.join`` -> `join`; `:ref:`title <label>`` -> `title`."""
    role, text = match.group(1), match.group(2)
    if role in ("pep", "rfc"):
        return f"{role.upper()} {text}"
    titled = TITLE_TARGET_RE.match(text)
    if titled and titled.group(1):
        return titled.group(1)
    text = text.lstrip("!")
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return text


def clean_inline(line: str) -> str:
    """Reduce inline reST markup to the text a reader sees (may span lines)."""
    line = ROLE_RE.sub(_role_text, line)
    line = LINK_RE.sub(r"\1", line)
    line = REF_RE.sub(r"\1", line)
    line = LITERAL_RE.sub(r"\1", line)
    line = STRONG_RE.sub(r"\1", line)
    line = EMPH_RE.sub(r"\1", line)
    line = FOOTNOTE_RE.sub("", line)
    line = line.replace("\\ ", "")
    return line


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the indented body of the directive at `start` (blank lines included)."""
    i = start + 1
    while i < len(lines):
        line = lines[i]
        if line.strip() and _indent(line) <= indent:
            break
        i += 1
    return i


def rst_to_text(source: str) -> str:
    """Turn one reST source file into plain text: prose and code kept, markup dropped."""
    lines = source.expandtabs(8).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        directive = DIRECTIVE_RE.match(line)
        if directive:
            indent, name, arg = (
                len(directive.group(1)),
                directive.group(2),
                directive.group(3),
            )
            base = name.split(":")[-1]  # `c:function` -> `function`
            if name in DROP_BLOCK or name.startswith("c:") and base not in SIGNATURE:
                i = _block_end(lines, i, indent)
                continue
            if name in VERSION_NOTES:
                version = arg.split()[0] if arg else ""
                note = VERSION_NOTES[name].format(version)
                rest = arg[len(version) :].strip()
                out.append(" " * indent + f"{note} {rest}".strip())
            elif arg and (base in SIGNATURE or name in {"rubric", "topic", "sidebar"}):
                out.append(" " * indent + arg)
            # Any other directive (note, seealso, code-block, doctest, ...): its body is the
            # content; the directive line itself and its `:option:` lines are noise.
            i += 1
            while i < len(lines) and OPTION_RE.match(lines[i]):
                i += 1
            continue
        if COMMENT_RE.match(line):
            i = _block_end(lines, i, _indent(line))
            continue
        if ADORNMENT_RE.match(line) or TABLE_BORDER_RE.match(line) and line.strip():
            i += 1
            continue
        if line.strip() == "::":
            i += 1
            continue
        if line.endswith("::"):
            # `Example::` renders as `Example:`; a spaced ` ::` renders as nothing.
            line = line[:-3] if line.endswith(" ::") else line[:-1]
        out.append(line)
        i += 1
    # Inline markup is cleaned on the whole text: roles and literals often wrap lines.
    return normalize_whitespace(clean_inline("\n".join(out)))


def normalize_whitespace(text: str) -> str:
    """Strip trailing spaces, collapse runs of blank lines into one, trim both ends."""
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_deb(workdir: Path, local_deb: Path | None) -> tuple[Path, str, str]:
    """Download (or take) the pinned .deb and check its hash; returns (path, version, sha)."""
    known = dict(PINNED_VERSIONS)
    if local_deb is not None:
        digest = sha256_of(local_deb)
        for version, sha in PINNED_VERSIONS:
            if digest == sha:
                return local_deb, version, sha
        raise SystemExit(f"{local_deb}: sha256 {digest} matches no pinned version {known}")
    errors = []
    for version, sha in PINNED_VERSIONS:
        spec = f"{PACKAGE}={version}"
        run = subprocess.run(
            ["apt-get", "download", spec],
            check=False,
            cwd=workdir,
            capture_output=True,
            text=True,
        )
        debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
        if run.returncode != 0 or not debs:
            errors.append(f"{spec}: {run.stderr.strip() or 'no .deb written'}")
            continue
        deb = debs[0]
        digest = sha256_of(deb)
        if digest != sha:
            raise SystemExit(f"{deb.name}: sha256 {digest}, expected {sha}; refusing to use it")
        return deb, version, sha
    raise SystemExit(
        "could not download any pinned version (try `apt-get update`, or pass --deb):\n  "
        + "\n  ".join(errors)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/corpus"), help="output folder")
    parser.add_argument("--deb", type=Path, help="use this already downloaded .deb")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        tmpdir = Path(tmp)
        deb, version, sha = fetch_deb(tmpdir, args.deb)
        root = tmpdir / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        sources = sorted((root / SOURCES_DIR).rglob("*.txt"))
        if not sources:
            raise SystemExit(f"{deb.name}: no reST sources under {SOURCES_DIR}")

        docs: list[str] = []
        for path in sources:
            text = rst_to_text(path.read_text(encoding="utf-8", errors="replace"))
            # A stray separator inside a document would split it at training time.
            text = text.replace(DOC_SEPARATOR, "<endoftext>")
            if len(text.encode()) >= MIN_DOC_BYTES:
                docs.append(text)
        # Keep the license notice next to the text it governs.
        shutil.copyfile(root / COPYRIGHT_FILE, args.out / "LICENSE.txt")

    corpus = f"\n{DOC_SEPARATOR}\n".join(docs)
    corpus_path = args.out / "corpus.txt"
    corpus_path.write_text(corpus, encoding="utf-8")
    manifest = {
        "package": PACKAGE,
        "version": version,
        "deb_sha256": sha,
        "source": f"Debian bookworm, {SOURCES_DIR}/**/*.txt (reStructuredText sources)",
        "license": LICENSE,
        "files_found": len(sources),
        "file_count": len(docs),
        "byte_count": corpus_path.stat().st_size,
        "corpus_sha256": sha256_of(corpus_path),
        "document_separator": DOC_SEPARATOR,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
