"""The one reader of JSON input files: traces, counterexamples, conformance cases, configurations.

Every command that reads such a file goes through :func:`read_json` (via
``model.actions.load_json_file``), which bounds the input *before* parsing it and accepts only
plain JSON, so that no file, however made, ends in a traceback:

* at most :data:`MAX_FILE_BYTES` bytes (64 MiB: an 800,000-step trace is about 50 MB);
* nesting at most :data:`MAX_DEPTH` arrays and objects deep (our files need 6);
* UTF-8 text;
* integer literals of at most :data:`MAX_INT_DIGITS` digits (an int64 or a uint64 needs 20;
  Python refuses to convert more than 4,300 digits and would raise from inside the parser);
* no ``NaN``, ``Infinity`` or ``-Infinity`` (Python's extensions of JSON);
* no object with the same key twice (Python would keep the last one silently);
* no string with a lone surrogate (``"\\ud800"`` is valid JSON but not text: printing it fails).

The limits are documented in ``docs/trace-format.md`` ("Limits").  Errors are
:class:`JsonInputError` with a one-line message; the caller adds the file's name.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 32
MAX_INT_DIGITS = 40

# A JSON string, escapes included (the unrolled form: fast on long files).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonInputError(ValueError):
    """The file is not JSON we read; the message says what and, where it can, where."""


def read_bounded(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the file at ``path``, refusing one larger than ``limit`` before reading
    it (a regular file) or after reading ``limit + 1`` bytes (a pipe or a device)."""
    try:
        with open(path, "rb") as handle:
            # The size of a regular file without reading it (seeking: model/ imports no os);
            # a pipe or a device cannot seek and is cut off after limit + 1 bytes instead.
            try:
                size: int | None = handle.seek(0, 2)
                handle.seek(0)
            except (OSError, ValueError):
                size = None
            if size is not None and size > limit:
                raise JsonInputError(_too_large(size, limit))
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise JsonInputError("no such file") from None
    except IsADirectoryError:
        raise JsonInputError("is a directory, not a file") from None
    except OSError as err:
        raise JsonInputError(f"cannot read: {err.strerror or err}") from None
    if len(data) > limit:
        raise JsonInputError(_too_large(None, limit))
    return data


def _too_large(size: int | None, limit: int) -> str:
    shown = f"{size:,} bytes" if size is not None else "larger"
    return (f"the file is {shown}; at most {limit:,} bytes ({limit / 2**20:g} MiB) are read "
            "(docs/trace-format.md, Limits)")


def _position(data: bytes | str, offset: int) -> str:
    newline: Any = b"\n" if isinstance(data, bytes) else "\n"
    line = data.count(newline, 0, offset) + 1
    column = offset - (data.rfind(newline, 0, offset) + 1) + 1
    return f"line {line} column {column}"


def nesting_depth(data: bytes, limit: int = MAX_DEPTH) -> int:
    """How deep arrays and objects nest in ``data`` (brackets inside strings do not count):
    exact up to ``limit``, some larger number beyond it.

    Each pass takes out every innermost pair, so the passes count the depth; C-speed byte
    operations throughout (a 50 MB trace takes about a second and a half, nearly all of it
    spent skipping strings).  Unbalanced brackets (not JSON anyway) count as nesting."""
    brackets = _STRING.sub(b"", data).translate(_ONE_KIND, _NOT_BRACKETS)
    depth = 0
    while depth <= limit:
        shorter = brackets.replace(b"[]", b"")
        if shorter == brackets:
            return depth + brackets.count(b"[")  # what is left: "]]][[[", unmatched
        brackets = shorter
        depth += 1
    return depth


class _LongIntegerError(JsonInputError):
    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _exact_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _LongIntegerError(text)
    return int(text)


def _no_constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not JSON (write a number, or null)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise JsonInputError(f"duplicate key {json.dumps(key)} in one object")
            seen.add(key)
    return obj


def parse_json(data: bytes) -> Any:
    """Parse ``data`` under the rules above; :class:`JsonInputError` otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JsonInputError(f"not UTF-8 text: byte 0x{data[err.start]:02x} at "
                             f"{_position(data, err.start)}") from None
    if nesting_depth(data) > MAX_DEPTH:
        raise JsonInputError(f"arrays and objects nest more than {MAX_DEPTH} deep; at most "
                             f"{MAX_DEPTH} levels are read")
    try:
        doc = json.loads(text, parse_int=_exact_int, parse_constant=_no_constant,
                         object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise JsonInputError(f"invalid JSON: {err.msg} at line {err.lineno} column "
                             f"{err.colno}") from None
    except _LongIntegerError as err:
        digits = len(err.literal.lstrip("-"))
        raise JsonInputError(f"an integer of {digits:,} digits at "
                             f"{_position(text, text.find(err.literal))}; at most "
                             f"{MAX_INT_DIGITS} digits are read") from None
    except RecursionError:  # pragma: no cover - the depth bound comes first
        raise JsonInputError("arrays and objects nest too deep") from None
    if _SURROGATE_ESCAPE.search(text):  # rare: only then is every string looked at
        _check_text(doc, "")
    return doc


def _check_text(value: Any, where: str) -> None:
    """A :class:`JsonInputError` naming the place of the first string (or key) that holds a
    lone surrogate, which no UTF-8 output can carry."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            bad = value[err.start]
            raise JsonInputError(f"{where or 'the document'}: a lone surrogate "
                                 f"\\u{ord(bad):04x} is not text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where or "the document")
            _check_text(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, f"{where}[{index}]")


def read_json(path: str, limit: int = MAX_FILE_BYTES) -> Any:
    """:func:`read_bounded`, then :func:`parse_json`."""
    return parse_json(read_bounded(path, limit))
