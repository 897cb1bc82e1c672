"""The batch manifest: a CSV file, one fusion per row, checked as a whole before anything runs.

    anatomical,functional,task,id,window,level
    sub-01/mri/,sub-01/pet/,PET-MRI,sub-01,6,3
    sub-02/T1.nii.gz,sub-02/ct.nii.gz,CT-MRI,sub-02,,

Required columns: anatomical, functional, task (a value may be empty for DICOM input: the task then comes
from the functional series' Modality). Optional: id (default ``line-N``, N the row's line in the file),
output (default ``<id>.nrrd``; relative to the output folder), and any ``ecfusion fuse`` option as a column
(colormap, window, level, ct_window, ct_level, register, transform, pet_units, anatomical_series, ...;
``-`` and ``_`` alike). Input paths may be files or DICOM folders, relative to the manifest's folder.
Each row's values are parsed by ``ecfusion fuse``'s own options (``options.FUSE_OPTIONS``): one set of rules
for both.
"""
from __future__ import annotations

import argparse
import codecs
import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ECFusionError
from .file_kind import not_a_regular_file
from .fuse_files import FuseRequest
from .options import add_fuse_options, manifest_columns
from .tasks import check_task
from .volume_io import OUTPUT_SUFFIXES, full_suffix, sidecar_path

REQUIRED = ("anatomical", "functional", "task")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
VOLUME_OUTPUTS = tuple(s for s in OUTPUT_SUFFIXES if s != ".png")


@dataclass
class BatchRow:
    """One manifest row: where it is (line), its name (id) and the fusion it asks for."""

    line: int
    id: str
    request: FuseRequest


class _RowError(Exception):
    pass


class _RowParser(argparse.ArgumentParser):
    """The ``fuse`` options (``options.FUSE_OPTIONS``) as a parser that raises instead of exiting."""

    def error(self, message: str):
        raise _RowError(message)


def _fuse_parser() -> argparse.ArgumentParser:
    """A parser of a row's settings: ``ecfusion fuse``'s options, declared once in ``options.py``."""
    parser = _RowParser(prog="manifest row", add_help=False)
    add_fuse_options(parser)
    return parser


def _columns(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{column name: option string} of the ``fuse`` options a manifest may set per row."""
    return manifest_columns()


def read_manifest(path: str | Path, output_dir: str | Path, *, device: str = "auto",
                  weights: str | None = None, model: str | None = None, backend: str = "auto") -> list[BatchRow]:
    """Every row as a ``FuseRequest`` (absolute paths), or one ECFusionError listing every problem with its line.

    Checked here: the header (required and unknown columns), each value (by the ``fuse`` parser: numbers,
    choices), task names, ids (unique, usable as file names), outputs (unique, a volume file type).
    Not checked here: whether the inputs can be read (a row that cannot fails alone when it runs).
    """
    path = Path(path)
    text = manifest_text(path)
    base, out_dir = path.resolve().parent, Path(output_dir).resolve()
    parser = _fuse_parser()
    columns = _columns(parser)
    problems: list[str] = []
    rows: list[BatchRow] = []
    try:
        with io.StringIO(text, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise ECFusionError(f"{path}: the manifest is empty; it needs a header line with "
                                    f"{', '.join(REQUIRED)}")
            names = [h.strip().lower().replace("-", "_") for h in header]
            missing = [c for c in REQUIRED if c not in names]
            unknown = [h for h, n in zip(header, names) if n not in columns and n not in ("id", "output")]
            duplicated = sorted({n for n in names if names.count(n) > 1})
            if missing:
                problems.append(f"line 1: missing column{'s' * (len(missing) > 1)} {', '.join(missing)} "
                                f"(required: {', '.join(REQUIRED)})")
            if unknown:
                problems.append(f"line 1: unknown setting{'s' * (len(unknown) > 1)} {', '.join(unknown)}; a column is "
                                f"one of id, output, {', '.join(sorted(columns))}")
            if duplicated:
                problems.append(f"line 1: column{'s' * (len(duplicated) > 1)} {', '.join(duplicated)} given twice")
            if problems:
                raise ECFusionError(_report(path, problems))
            for values in reader:
                line = reader.line_num
                if not any(v.strip() for v in values) or values[0].lstrip().startswith("#"):
                    continue
                if len(values) != len(names):
                    problems.append(f"line {line}: {len(values)} values for {len(names)} columns")
                    continue
                try:
                    rows.append(_row(dict(zip(names, (v.strip() for v in values))), line, parser, columns, base,
                                     out_dir, {"device": device, "backend": backend, "weights": weights,
                                               "model": model}))
                except (_RowError, ECFusionError) as exc:
                    problems.append(f"line {line}: {exc}")
    except csv.Error as exc:
        raise ECFusionError(f"{path} is not a readable CSV file ({exc})") from exc
    problems += _collisions(rows)
    if problems:
        raise ECFusionError(_report(path, problems))
    if not rows:
        raise ECFusionError(f"{path}: the manifest has a header but no rows")
    return rows


def _row(values: dict, line: int, parser, columns, base: Path, out_dir: Path, batch: dict) -> BatchRow:
    """One row's ``FuseRequest``; ``batch``: the batch-level device and backend, and the weights file or model
    used where the row names neither."""
    for name in ("anatomical", "functional"):
        if not values[name]:
            raise _RowError(f"the {name} input is empty")
    row_id = values.get("id") or f"line-{line}"
    if not ID_PATTERN.match(row_id):
        raise _RowError(f"id '{row_id}' cannot name a file: use letters, digits, '.', '_' and '-'")
    if values["task"]:
        check_task(values["task"])
    output = out_dir / (values.get("output") or f"{row_id}.nrrd")
    if full_suffix(output) not in VOLUME_OUTPUTS:
        raise _RowError(f"output {output.name}: use one of {', '.join(VOLUME_OUTPUTS)}")
    argv = [f"--output={output}"]
    for name, value in values.items():
        if name in columns and value:
            if name in ("anatomical", "functional", "transform", "weights"):
                value = str((base / value).resolve())
            argv.append(f"{columns[name]}={value}")
    args = parser.parse_args(argv)
    args.device, args.backend = batch["device"], batch["backend"]
    if not values.get("weights") and not values.get("model"):
        args.weights, args.model = batch["weights"], batch["model"]
    return BatchRow(line, row_id, FuseRequest.from_args(args))


def manifest_text(path: Path) -> str:
    """The manifest's text: UTF-8 (with or without the BOM Excel writes) or UTF-16/32 with a BOM (Excel's
    "Unicode text"); ECFusionError saying what the file is otherwise (a folder, missing, another encoding)."""
    if path.is_dir():
        csvs = sorted(p.name for p in path.glob("*.csv"))
        hint = f"; it holds {', '.join(csvs[:5])}" if csvs else ""
        raise ECFusionError(f"manifest {path} is a folder; give the CSV file itself{hint}")
    if not path.is_file():
        special = not_a_regular_file(path, "manifest")  # a pipe: its folder (/dev/fd) cannot anchor relative paths
        raise special or ECFusionError(f"manifest not found: {path}")
    data = path.read_bytes()
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                       (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            break
    else:
        codec = "utf-8"
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ECFusionError(f"manifest {path} is not {codec.upper().replace('-SIG', '')} text (byte 0x{data[exc.start]:02x} "
                            f"on line {line} cannot be decoded): save it as 'CSV UTF-8' (Excel: Save As, "
                            "CSV UTF-8; LibreOffice: character set Unicode (UTF-8))") from exc


def _identity(path: str | Path) -> tuple:
    """What a path names: its device and inode when it exists (hard links, bind mounts), else its real path
    (``..`` and symbolic links resolved, even where the file does not exist yet)."""
    real = os.path.realpath(path)  # first: "fused/../x" names x even before fused/ exists
    try:
        st = os.stat(real)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", real)


def _shown(path: str | Path) -> str:
    """A path as the user would write it: relative to the working folder when inside it, else absolute."""
    real = os.path.realpath(path)
    rel = os.path.relpath(real)
    return real if rel.startswith("..") else rel


def _collisions(rows: list[BatchRow]) -> list[str]:
    """Every row's outputs (the volume and its .json sidecar) against every other row's outputs and every row's
    inputs, by what the paths name (not how they are spelt): a repeated id, two rows writing one file, an
    output that is a row's input (the batch would destroy it) -- each with its line numbers."""
    problems, seen_ids, repeated = [], {}, set()
    for row in rows:
        if row.id in seen_ids:
            problems.append(f"line {row.line}: id '{row.id}' is also on line {seen_ids[row.id]}; ids must be unique")
            repeated.add(row.line)  # its default output repeats too: one problem is enough
        seen_ids.setdefault(row.id, row.line)
    reads: dict[tuple, tuple[int, str, str]] = {}
    for row in rows:
        r = row.request
        for what, value in (("anatomical", r.anatomical), ("functional", r.functional), ("transform", r.transform),
                            ("weights", r.weights)):
            if value:
                reads.setdefault(_identity(value), (row.line, what, str(value)))
    writes: dict[tuple, tuple[int, str]] = {}  # (line, path)
    for row in rows:
        outputs = [Path(row.request.output)] + ([sidecar_path(row.request.output)] if sidecar_path(row.request.output) else [])
        for out in outputs:
            key = _identity(out)
            if key in reads:
                line, what, value = reads[key]
                whose = "its own" if line == row.line else f"line {line}'s"
                problems.append(f"line {row.line}: output {_shown(out)} is {whose} {what} input {_shown(value)}; "
                                "writing it would destroy that input. Choose another output name")
            if key in writes and writes[key][0] != row.line and row.line not in repeated:
                problems.append(f"line {row.line}: output {_shown(out)} is also written by line {writes[key][0]}; "
                                "each row needs its own output")
            writes.setdefault(key, (row.line, str(out)))
    return problems


def _report(path: Path, problems: list[str]) -> str:
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    return f"manifest {path} has {len(problems)} problem{'s' * (len(problems) > 1)}; nothing was run:\n" + \
        "\n".join(f"  {p}" for p in shown)
