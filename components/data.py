"""Reading labelled text data: the mirror, user files, or the data set's public source.

Every reader returns a DataFrame with exactly two string columns, ``text`` and ``label``. Problems a user can
fix (missing file, wrong columns, bad encoding, empty file) raise DataError naming the file and the fix; the
source file is only ever read, never modified, so a failed load loses nothing.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

import pandas as pd

from components.config import DatasetSpec
from components.safety import UnsafeInputError, check_name, safe_child

READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


# C0 controls except tab, newline and carriage return, DEL, and the C1 controls: never part of a real text (a NUL
# usually means a UTF-16 or binary file); components.validation refuses texts that contain any of them.
# C0 controls except tab, newline and carriage return, and DEL. C1 (U+0080-U+009F) is allowed: real public data
# carries it as mojibake of Windows-1252 quotes (16 tweets of twitter_financial_news_sentiment hold U+009D).
CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
_CONTROL_RE = re.compile(CONTROL_CHARS)


class DataError(ValueError):
    """A data file or data set cannot be used as given; the message says what is wrong and where."""


def visible_text(text: str) -> str:
    """The text as a reader sees it: NFKC-normalised, format characters (Unicode category Cf: U+200B zero-width
    space, U+200C, U+2060 word joiner, U+FEFF, bidi marks, ...) removed, surrounding whitespace stripped.

    Used for the blank, length and duplicate checks only; the stored text stays as given. "" = blank-looking."""
    if text.isascii():  # no format characters, and NFKC leaves ASCII as it is
        return text.strip()
    normal = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in normal if unicodedata.category(ch) != "Cf").strip()


def control_chars(text: str) -> list[str]:
    """The distinct control characters (see CONTROL_CHARS) in a text, as U+XXXX, in order of first appearance."""
    return list(dict.fromkeys(f"U+{ord(ch):04X}" for ch in _CONTROL_RE.findall(text)))


def read_labelled_file(path: Path, text_column: str = "text", label_column: str = "label") -> pd.DataFrame:
    """Read a CSV/TSV/JSONL/parquet file into text,label strings, with errors a user can act on."""
    path = Path(path)
    return _select_columns(_read_checked(path), path, text_column, label_column)


def _read_checked(path: Path) -> pd.DataFrame:
    """The raw table of a supported, existing, non-empty file."""
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(READERS)}")
    require_nonempty_file(path)
    return _read_raw(path, kind)


def require_nonempty_file(path: Path) -> None:
    """DataError naming the file when it does not exist or is empty (every reader checks this first)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def read_texts(path: Path, text_column: str = "text") -> list[str]:
    """Unlabelled texts to score (same formats and checks as labelled files, no label column needed)."""
    path = Path(path)
    frame = _read_checked(path)
    if text_column not in frame.columns:
        raise DataError(f"{path}: no {text_column!r} column; found {list(frame.columns)}")
    return frame[text_column].fillna("").astype(str).tolist()


def _read_raw(path: Path, kind: str) -> pd.DataFrame:
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        if kind == "jsonl":
            return pd.read_json(path, lines=True, encoding="utf-8", dtype=False)
        frame = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", encoding="utf-8", dtype=str,
                            keep_default_na=False, on_bad_lines="error", engine=_csv_engine(path))
        if not isinstance(frame.index, pd.RangeIndex):
            # pandas silently turns a surplus leading field on every row into the index: an unquoted separator.
            raise DataError(f"{path}: malformed {kind} file: rows have more fields than the header "
                            f"(a text containing the separator must be quoted)")
        return frame
    except DataError:
        raise
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 (byte {error.start}); re-save the file as UTF-8") from None
    except (pd.errors.ParserError, ValueError) as error:
        raise DataError(f"{path}: malformed {kind} file: {str(error).splitlines()[0]}") from None
    except Exception as error:  # pyarrow raises its own types for corrupt parquet
        raise DataError(f"{path}: cannot read as {kind}: {error}") from None


def _csv_engine(path: Path) -> str:
    """pandas' C parser silently cuts a field at a NUL byte ("ab\\x00cd" -> "ab"): files with NUL bytes go through
    the python parser, which keeps them, so validation can refuse those rows by number. A NUL in the header
    means UTF-16 (or a binary file), which no row-level message would explain: that is refused here."""
    with open(path, "rb") as handle:
        head = handle.readline()
        has_nul = b"\x00" in head or any(b"\x00" in block for block in iter(lambda: handle.read(1 << 20), b""))
    if b"\x00" in head:
        raise DataError(f"{path}: the header line contains NUL bytes: the file looks UTF-16 encoded (or binary); "
                        f"re-save the file as UTF-8")
    return "python" if has_nul else "c"


def _select_columns(frame: pd.DataFrame, origin: object, text_column: str, label_column: str) -> pd.DataFrame:
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise DataError(f"{origin}: missing column(s) {missing}; found {list(frame.columns)}. "
                        f"Set text_column/label_column for this data set in params.yaml")
    out = pd.DataFrame({"text": frame[text_column], "label": frame[label_column]})
    out = out.dropna()
    out["text"] = out["text"].astype(str).str.strip()
    out["label"] = out["label"].astype(str).str.strip()
    # a text of only invisible format characters (U+200B, U+FEFF, ...) is as empty as "" (see visible_text)
    blank = out["text"].map(lambda t: visible_text(t) == "")
    out = out[~blank & (out["label"] != "")].reset_index(drop=True)
    if out.empty:
        raise DataError(f"{origin}: no rows with both a text and a label")
    _check_labels(out["label"].unique(), origin)
    return out


def _check_labels(labels, origin: object) -> None:
    """Labels become report rows, HTML and column names: no control characters, bounded length (components.safety)."""
    from components.safety import UnsafeInputError, check_label

    for label in labels:
        try:
            check_label(label)
        except UnsafeInputError as error:
            raise DataError(f"{origin}: {error}") from None


def load_split(name: str, spec: DatasetSpec, split: str, mirror: Path | None, cache_dir: Path | None = None) -> pd.DataFrame:
    """One split of a declared data set: mirror copy or user file first, then URL, then the hub."""
    local = _local_file(name, spec, split, mirror)
    if local is not None:
        return read_labelled_file(local, spec.text_column, spec.label_column)
    if split in spec.url:
        return _load_url(spec.url[split], spec)
    if spec.hub is not None and split in spec.hub.splits:
        return _load_hub(name, spec, split, cache_dir)
    where = f"mirror {mirror}" if mirror else "no data mirror (set METAADAPT_DATA_MIRROR)"
    raise DataError(f"data set {name!r} split {split!r}: not found in {where}, and no public source "
                    f"(`hub` or `url`) is declared for it in params.yaml")


def _local_file(name: str, spec: DatasetSpec, split: str, mirror: Path | None) -> Path | None:
    """A user file given by absolute path always wins; relative names are looked up in the mirror."""
    if split not in spec.files:
        return None
    declared = Path(spec.files[split]).expanduser()
    if declared.is_absolute():
        return declared
    if mirror is None:
        return None
    try:
        folder = mirror / spec.mirror_folder if spec.mirror_folder else mirror / check_name("data set", name)
        candidate = safe_child(folder, declared)
    except UnsafeInputError as error:
        raise DataError(f"data set {name!r} split {split!r}: {error}") from None
    return candidate if candidate.is_file() else None


def _load_url(url: str, spec: DatasetSpec) -> pd.DataFrame:
    suffix = Path(url.split("?")[0]).suffix.lower()
    kind = READERS.get(suffix, "csv")
    try:
        if kind == "parquet":
            frame = pd.read_parquet(url)
        elif kind == "jsonl":
            frame = pd.read_json(url, lines=True, dtype=False)
        else:
            frame = pd.read_csv(url, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False)
    except Exception as error:
        raise DataError(f"{url}: download or parse failed: {error}") from None
    return _select_columns(frame, url, spec.text_column, spec.label_column)


def _load_hub(name: str, spec: DatasetSpec, split: str, cache_dir: Path | None) -> pd.DataFrame:
    """Download from the Hugging Face hub; integer labels become their names (ClassLabel or label_names)."""
    import datasets  # heavy import, only on this path

    hub = spec.hub
    assert hub is not None
    try:
        ds = datasets.load_dataset(hub.id, hub.config, split=hub.splits[split],
                                   cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as error:
        raise DataError(f"data set {name!r}: no mirror copy and the hub download of {hub.id!r} failed: {error}") from None
    frame = ds.to_pandas()
    feature = ds.features.get(hub.label_column)
    names = getattr(feature, "names", None) or hub.label_names
    if names is not None and pd.api.types.is_integer_dtype(frame[hub.label_column]):
        frame[hub.label_column] = frame[hub.label_column].map(lambda i: names[int(i)])
    return _select_columns(frame, f"hub:{hub.id}", hub.text_column, hub.label_column)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (model checksums, quarantine moves, ingest fingerprints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_hash(text: str) -> str:
    """Stable id of a text after whitespace/case normalisation, used for leakage checks."""
    normal = " ".join(text.lower().split())
    return hashlib.sha1(normal.encode("utf-8")).hexdigest()
