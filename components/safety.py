"""Checks on names, labels and paths that arrive from users, and redaction of secrets before anything is logged.

Domain and data set names become directory and file names (``models/<domain>/``, ``<mirror>/<dataset>/``), so a
name like ``../../etc`` or ``/tmp/x`` must never reach a path join; labels end up in JSON, HTML reports and
column names, so control characters (which can rewrite a terminal line or split a log record) are refused.
Every check raises ``UnsafeInputError`` (a ValueError) naming the kind of value, the value and what is allowed.
Texts to score are checked by ``text_problem`` (a reason, not an exception, so one bad row of a batch can be
reported while the others are answered), and CSV files written for people go through ``csv_safe``.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_LABEL_CHARS = 200
# Query parameters whose values are credentials in common URL schemes (S3/GCS/Azure signed URLs, API tokens).
SECRET_QUERY_KEYS = re.compile(r"(token|secret|password|passwd|pwd|signature|sig|key|credential|auth)", re.I)
URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


class UnsafeInputError(ValueError):
    """A user-supplied name, label or path is not allowed; the message says which value and why."""


def check_name(kind: str, value: object) -> str:
    """A domain / data set / split name that is safe as one path component; returned unchanged.

    Allowed: 1-64 characters, letters, digits, ``_ . -``, starting with a letter or digit, and no ``..``.
    """
    if not isinstance(value, str):
        raise UnsafeInputError(f"{kind} name must be a string, got {type(value).__name__} {value!r}")
    if not NAME_PATTERN.fullmatch(value) or ".." in value:
        raise UnsafeInputError(f"{kind} name {value!r} is not allowed: use 1-64 letters, digits, '_', '.', '-', "
                               f"starting with a letter or digit, without '..' (it becomes a directory name)")
    return value


def control_characters(value: str) -> list[str]:
    """Unicode category C* (control, format, unassigned, private use, surrogates), as escapes for the message."""
    return sorted({repr(c)[1:-1] for c in value if unicodedata.category(c).startswith("C")})


def check_label(value: object, kind: str = "label") -> str:
    """A class label: stripped, non-empty, at most MAX_LABEL_CHARS characters, no control characters."""
    if not isinstance(value, str):
        raise UnsafeInputError(f"{kind} must be a string, got {type(value).__name__} {value!r}")
    stripped = value.strip()
    if not stripped:
        raise UnsafeInputError(f"{kind} {value!r} is empty")
    if len(stripped) > MAX_LABEL_CHARS:
        raise UnsafeInputError(f"{kind} {stripped[:40]!r}... has {len(stripped)} characters; at most "
                               f"{MAX_LABEL_CHARS} are allowed")
    bad = control_characters(stripped)
    if bad:
        raise UnsafeInputError(f"{kind} {stripped!r} contains control characters {bad}; remove them")
    return stripped


def check_relative_path(name: str | Path, base: str | Path = "its base directory") -> Path:
    """A relative path that cannot leave its base lexically: not empty or absolute, no ``..``, no control chars."""
    text = str(name)
    if not text or control_characters(text):
        raise UnsafeInputError(f"path {text!r} is empty or contains control characters")
    relative = Path(text)
    if relative.is_absolute() or text.startswith("~"):
        raise UnsafeInputError(f"path {text!r} must be relative to {base}, not absolute")
    if ".." in relative.parts:
        raise UnsafeInputError(f"path {text!r} contains '..'; it must stay inside {base}")
    return relative


def safe_child(base: Path, name: str | Path) -> Path:
    """``base / name`` resolved, refused unless it stays inside ``base`` (symlinks followed).

    Refuses absolute paths, any ``..`` component and control characters outright (clearer than resolving them),
    then resolves both paths so a symlink pointing out of ``base`` is caught too.
    """
    relative = check_relative_path(name, base)
    text = str(name)
    root = Path(base).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise UnsafeInputError(f"path {text!r} resolves to {target}, outside {root} (a symlink escaping it?)")
    return target


# ------------------------------------------------------------------------------------------------ secrets


def redact_uri(uri: str) -> str:
    """The URI without user:password@ and with credential-like query values replaced by ``***``.

    A URI with nothing to hide comes back unchanged, byte for byte.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI redacted>"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(SECRET_QUERY_KEYS.search(key) for key, _ in pairs)
    if "@" not in parts.netloc and not secret_query:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, "***" if SECRET_QUERY_KEYS.search(k) else v) for k, v in pairs], safe="*") \
        if secret_query else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_secrets(value: object) -> object:
    """Any URI inside a string (or inside the strings of a list / dict) redacted (see redact_uri); other values
    unchanged. For logged params, tags and messages."""
    if isinstance(value, str):
        return URI_IN_TEXT.sub(lambda match: redact_uri(match.group(0)), value)
    if isinstance(value, (list, tuple)):
        return type(value)(redact_secrets(v) for v in value)
    if isinstance(value, dict):
        return {k: redact_secrets(v) for k, v in value.items()}
    return value


def has_credentials(uri: str) -> bool:
    """True when the URI carries a password in its userinfo or a credential-like query parameter."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    return parts.password is not None or any(SECRET_QUERY_KEYS.search(k) for k, _ in parse_qsl(parts.query))


# ------------------------------------------------------------------------------------------------ text values

# A spreadsheet (Excel, LibreOffice, Google Sheets) runs a CSV cell starting with one of these as a formula
# (``=cmd|' /C calc'!A0``, ``@SUM(...)``, a leading tab or CR), see OWASP "CSV Injection".
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A value (or every string cell and column name of a DataFrame) safe to open in a spreadsheet.

    OWASP's remedy: a string starting with ``= + - @``, tab or CR gets a leading single quote ``'``, so the
    spreadsheet shows it as text instead of evaluating it. Other values (numbers, None, other strings) are returned
    unchanged; a DataFrame comes back as a copy. Use on every CSV written for people to open.
    """
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_PREFIXES) else value
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        frame = value.rename(columns=lambda c: csv_safe(c) if isinstance(c, str) else c)
        for column in frame.columns:
            if not pd.api.types.is_numeric_dtype(frame[column]):
                frame[column] = frame[column].map(csv_safe)
        return frame
    return value


def text_problem(value: Any) -> str | None:
    """Why a value cannot be scored as a text, or None when it can (a non-empty str that encodes as UTF-8).

    Refused: missing values (None/NaN), non-strings (bytes included), strings holding a lone surrogate (what
    Python makes of undecodable bytes in argv or ``errors='surrogateescape'`` input; a tokenizer cannot take
    them) and empty or whitespace-only strings (a model would still answer them with a confident label).
    """
    if value is None or (isinstance(value, float) and value != value):
        return "missing text"
    if isinstance(value, (bytes, bytearray)):
        return "bytes, not text (decode it as UTF-8 first)"
    if not isinstance(value, str):
        return f"not a string (got {type(value).__name__})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = value[error.start]
        return f"not valid UTF-8 text: lone surrogate {bad!r} at character {error.start}"
    if not value.strip():
        return "empty text"
    return None
