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
import csv
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ECFusionError
from .fuse_files import FuseRequest
from .options import add_fuse_options, manifest_columns
from .tasks import check_task
from .volume_io import OUTPUT_SUFFIXES, full_suffix

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
                  weights: str | None = None) -> list[BatchRow]:
    """Every row as a ``FuseRequest`` (absolute paths), or one ECFusionError listing every problem with its line.

    Checked here: the header (required and unknown columns), each value (by the ``fuse`` parser: numbers,
    choices), task names, ids (unique, usable as file names), outputs (unique, a volume file type).
    Not checked here: whether the inputs can be read (a row that cannot fails alone when it runs).
    """
    path = Path(path)
    if not path.is_file():
        raise ECFusionError(f"manifest not found: {path}")
    base, out_dir = path.resolve().parent, Path(output_dir).resolve()
    parser = _fuse_parser()
    columns = _columns(parser)
    problems: list[str] = []
    rows: list[BatchRow] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
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
                                     out_dir, device, weights))
                except (_RowError, ECFusionError) as exc:
                    problems.append(f"line {line}: {exc}")
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ECFusionError(f"{path} is not a readable CSV file ({exc})") from exc
    problems += _duplicates(rows)
    if problems:
        raise ECFusionError(_report(path, problems))
    if not rows:
        raise ECFusionError(f"{path}: the manifest has a header but no rows")
    return rows


def _row(values: dict, line: int, parser, columns, base: Path, out_dir: Path, device: str, weights) -> BatchRow:
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
    args.device = device
    if not values.get("weights"):
        args.weights = weights
    return BatchRow(line, row_id, FuseRequest.from_args(args))


def _duplicates(rows: list[BatchRow]) -> list[str]:
    problems, seen_ids, seen_outputs = [], {}, {}
    for row in rows:
        out = str(Path(row.request.output))
        if row.id in seen_ids:
            problems.append(f"line {row.line}: id '{row.id}' is also on line {seen_ids[row.id]}; ids must be unique")
        elif out in seen_outputs:
            problems.append(f"line {row.line}: output {out} is also written by line {seen_outputs[out]}")
        seen_ids.setdefault(row.id, row.line)
        seen_outputs.setdefault(out, row.line)
    return problems


def _report(path: Path, problems: list[str]) -> str:
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    return f"manifest {path} has {len(problems)} problem{'s' * (len(problems) > 1)}; nothing was run:\n" + \
        "\n".join(f"  {p}" for p in shown)
