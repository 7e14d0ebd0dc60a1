"""The ctypes table (tinynn/_lib.py FUNCTIONS) against native/tinynn.h.

The header is parsed with cffi's C parser, so a function added, removed or
changed in the header and not in the table (or the reverse) fails here
instead of corrupting arguments at run time.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import cffi
import pytest

import tinynn
from tinynn import _lib

HEADER = Path(__file__).resolve().parents[2] / "native" / "tinynn.h"

PRIMITIVES = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "double": ctypes.c_double}


def header_cdef() -> str:
    """tinynn.h reduced to what cffi's cdef accepts: no comments, no
    preprocessor lines, no extern "C" braces, no TNN_API."""
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"^\s*#.*$", "", text, flags=re.M)
    text = re.sub(r'extern\s+"C"\s*\{', "", text)
    text = re.sub(r"^\s*\}\s*$", "", text, flags=re.M)
    return re.sub(r"\bTNN_API\b", "", text)


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, object], list[str]]:
    """(name -> cffi function type of each header function the library
    exports, names of header functions the library does not export)."""
    ffi = cffi.FFI()
    ffi.cdef(header_cdef())
    lib = ffi.dlopen(tinynn.library_path())
    types, unexported = {}, []
    for name in dir(lib):
        try:
            types[name] = ffi.typeof(getattr(lib, name))
        except AttributeError:
            unexported.append(name)
    return types, unexported


@pytest.fixture(scope="module")
def declared(parsed) -> dict[str, object]:
    return parsed[0]


def header_function_names() -> set[str]:
    return set(re.findall(r"\b(tnn_\w+)\s*\(", header_cdef())) - {"tnn_log_callback"}


def ctypes_of(ctype) -> object:
    """The ctypes type our table must use for a cffi type."""
    if ctype.kind == "primitive":
        if ctype.cname not in PRIMITIVES:
            pytest.fail(f"no ctypes mapping for C type {ctype.cname}")
        return PRIMITIVES[ctype.cname]
    if ctype.kind == "pointer":
        item = ctype.item
        if item.kind == "primitive" and item.cname == "char":
            return ctypes.c_char_p
        return ctypes.c_void_p
    if ctype.kind == "function":  # a function-pointer argument: the log callback
        return _lib.LOG_CALLBACK
    if ctype.kind == "void":
        return None
    pytest.fail(f"no ctypes mapping for C type {ctype.cname} ({ctype.kind})")


def _n(t) -> str:
    return getattr(t, "__name__", repr(t))


def test_header_declares_functions(parsed):
    types, unexported = parsed
    names = set(types) | set(unexported)
    assert len(names) > 50
    assert names == header_function_names()


def test_library_exports_every_header_function(parsed):
    _, unexported = parsed
    assert not unexported, (
        f"declared in native/tinynn.h, not exported by {tinynn.library_path()}: "
        f"{sorted(unexported)} (stale build? `ninja -C build/native`)"
    )


def test_table_has_every_function_and_no_other():
    names = header_function_names()
    missing = sorted(names - set(_lib.FUNCTIONS))
    extra = sorted(set(_lib.FUNCTIONS) - names)
    assert not missing, f"in native/tinynn.h but not in tinynn/_lib.py FUNCTIONS: {missing}"
    assert not extra, f"in tinynn/_lib.py FUNCTIONS but not in native/tinynn.h: {extra}"


def test_signatures_agree(declared):
    problems = []
    for name, ftype in sorted(declared.items()):
        if name not in _lib.FUNCTIONS:
            continue  # reported by test_table_has_every_function_and_no_other
        argtypes, restype, _kind = _lib.FUNCTIONS[name]
        want_args = [ctypes_of(a) for a in ftype.args]
        if len(argtypes) != len(want_args):
            problems.append(
                f"{name}: {len(argtypes)} arguments, header {ftype.cname} has {len(want_args)}"
            )
            continue
        for i, (got, want) in enumerate(zip(argtypes, want_args, strict=True)):
            if got is not want:
                problems.append(
                    f"{name}: argument {i} ({ftype.args[i].cname}) is {_n(got)}, "
                    f"expected {_n(want)}"
                )
        want_res = ctypes_of(ftype.result)
        if restype is not want_res:
            problems.append(
                f"{name}: result ({ftype.result.cname}) is {_n(restype)}, expected {_n(want_res)}"
            )
    assert not problems, "ctypes table and header disagree:\n  " + "\n  ".join(problems)


def test_log_callback_type_matches(declared):
    (callback,) = [a for a in declared["tnn_set_log_callback"].args if a.kind == "function"]
    want = [ctypes_of(a) for a in callback.args]
    assert list(_lib.LOG_CALLBACK._argtypes_) == want
    assert _lib.LOG_CALLBACK._restype_ is ctypes_of(callback.result)


def test_handle_results_are_checked(declared):
    """Every function returning a tensor or session handle raises on NULL,
    every int status / int64 count on a negative value (errcheck kinds)."""
    wrong = []
    for name, ftype in declared.items():
        kind = _lib.FUNCTIONS.get(name, (None, None, None))[2]
        res = ftype.result
        if res.kind == "pointer" and res.item.cname in ("tnn_tensor", "tnn_session"):
            if kind != _lib.HANDLE:
                wrong.append(f"{name} returns {res.cname} but its kind is {kind}")
        elif res.cname == "int64_t" and kind != _lib.COUNT64:
            wrong.append(f"{name} returns int64_t but its kind is {kind}")
    assert not wrong, "\n".join(wrong)


def test_abi_version():
    assert _lib.load().tnn_abi_version() == tinynn._lib.ABI_VERSION == tinynn.ABI_VERSION
    match = re.search(r"#define\s+TNN_ABI_VERSION\s+(\d+)", HEADER.read_text())
    assert match and int(match.group(1)) == tinynn.ABI_VERSION


def test_type_ids_match_header():
    from tinynn.dtypes import GGML_TYPE_IDS

    text = HEADER.read_text()
    for name, type_id in GGML_TYPE_IDS.items():
        match = re.search(rf"#define\s+TNN_TYPE_{name.upper()}\s+(\d+)", text)
        assert match, f"TNN_TYPE_{name.upper()} not in the header"
        assert int(match.group(1)) == type_id, name


def test_file_range_records_match_the_header():
    """tinynn.FILE_RANGE_DTYPE is tnn_file_range field for field (names, offsets, size), and
    the file types it names are the header's."""
    from tinynn.file_reads import FILE_RANGE_DTYPE, FILE_TYPE_IDS, FILE_TYPE_OF_T

    ffi = cffi.FFI()
    ffi.cdef(header_cdef())
    assert ffi.sizeof("tnn_file_range") == FILE_RANGE_DTYPE.itemsize
    fields = dict(ffi.typeof("tnn_file_range").fields)
    assert list(fields) == list(FILE_RANGE_DTYPE.names)
    for name, (dtype, offset) in FILE_RANGE_DTYPE.fields.items():
        assert fields[name].offset == offset, name
        assert ffi.sizeof(fields[name].type) == dtype.itemsize, name
    text = HEADER.read_text()
    assert re.search(rf"#define\s+TNN_FILE_TYPE_OF_T\s+\({FILE_TYPE_OF_T}\)", text)
    for name, type_id in FILE_TYPE_IDS.items():
        match = re.search(rf"#define\s+TNN_TYPE_{name.upper()}\s+(\d+)", text)
        assert match and int(match.group(1)) == type_id, name
