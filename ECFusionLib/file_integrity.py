"""Is an image file complete? Truncated files must be refused, not read with their missing half as zeros.

SimpleITK fills a cut-off ``.nii`` with zeros and reads part of a cut-off ``.nii.gz`` without complaint, and
reports a cut-off ``.mha`` as "No such file or directory". ``check_complete`` compares the voxel data a
file holds with what its header describes, before SimpleITK reads it:

- NIfTI-1/-2 ``.nii``: file size >= vox_offset + voxels x bitpix / 8;
- ``.nii.gz``: a complete gzip stream (every member ends with its trailer) holding at least that many bytes;
- NRRD (``.nrrd``, ``.nhdr`` with a detached ``data file``), raw or gzip encoding;
- MetaImage (``.mha``, ``.mhd`` with a detached ``ElementDataFile``), raw or zlib-compressed.

Other encodings and multi-file layouts are left to the reader. Raises ``ECFusionError`` naming the file,
the bytes expected and found.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import ECFusionError

CHUNK = 1 << 20
NRRD_TYPE_BYTES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                     "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                     "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                     "double"), 8),
}
MET_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                  "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                  "MET_DOUBLE": 8}


def full_suffix(path: str | Path) -> str:
    """The lower-case suffix that names a format: ".nii.gz" for gzipped NIfTI, else the last one (".nrrd")."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def check_complete(path: str | Path, what: str = "image") -> None:
    """ECFusionError if ``path`` (NIfTI, NRRD or MetaImage) holds less voxel data than its header describes."""
    path = Path(path)
    suffix = full_suffix(path)
    try:
        if suffix == ".nii":
            _check_nifti(path, what)
        elif suffix == ".nii.gz" and _is_gzip(path):
            _check_nifti_gz(path, what)
        elif suffix == ".nii.gz":  # an uncompressed NIfTI named .nii.gz: ITK reads it as such
            _check_nifti(path, what)
        elif suffix in (".nrrd", ".nhdr"):
            _check_nrrd(path, what)
        elif suffix in (".mha", ".mhd"):
            _check_meta(path, what)
    except (ValueError, struct.error, IndexError, KeyError):
        return  # a header this check does not understand: the reader will say what is wrong


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _cut(what: str, path: Path, detail: str) -> ECFusionError:
    return ECFusionError(f"{what} {path} is incomplete: {detail}. It was probably cut off while copying or "
                         "downloading; copy it again.")


def _short(what, path, expected: int, actual: int, unit="bytes of voxel data") -> ECFusionError:
    return _cut(what, path, f"its header describes {expected} {unit} but the file holds {actual} "
                            f"({100 * actual / max(expected, 1):.0f} %)")


# ------------------------------------------------------------------ NIfTI
def nifti_data_end(header: bytes) -> int | None:
    """vox_offset + voxel bytes from the first 540 bytes of a NIfTI-1 or NIfTI-2 file; None if not NIfTI."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dim = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            return max(offset, 352) + _voxels(dim) * bitpix // 8  # single-file NIfTI-1: data at >= 352
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dim = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            return max(offset, 544) + _voxels(dim) * bitpix // 8
    return None


def _voxels(dim) -> int:
    n = int(dim[0])
    if not 1 <= n <= 7:
        raise ValueError("bad dim[0]")
    return int(np.prod([max(int(d), 1) for d in dim[1 : n + 1]], dtype=np.int64))


def _check_nifti(path: Path, what: str) -> None:
    with open(path, "rb") as fh:
        end = nifti_data_end(fh.read(540))
    size = path.stat().st_size
    if end is not None and size < end:
        raise _short(what, path, end, size, "bytes (header and voxel data)")


def _check_nifti_gz(path: Path, what: str) -> None:
    total, head, complete = _gunzip_count(path, keep=540)
    if not complete:
        raise _cut(what, path, f"its gzip stream ends early (after {total} uncompressed bytes)")
    end = nifti_data_end(head)
    if end is not None and total < end:
        raise _short(what, path, end, total, "uncompressed bytes (header and voxel data)")


def _gunzip_count(path: Path, offset: int = 0, keep: int = 0) -> tuple[int, bytes, bool]:
    """Decompress a (multi-member) gzip stream from ``offset``: (uncompressed bytes, the first ``keep`` of them,
    whether the last member ended with its trailer). Memory: one chunk at a time."""
    total, head, complete = 0, b"", False
    d = None
    with open(path, "rb") as fh:
        fh.seek(offset)
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            while chunk:
                if d is None:
                    if complete and chunk.strip(b"\x00") == b"":  # zero padding after the last member
                        break
                    d, complete = zlib.decompressobj(16 + zlib.MAX_WBITS), False
                try:
                    out = d.decompress(chunk)
                except zlib.error:
                    return total, head, False
                total += len(out)
                if len(head) < keep:
                    head += out[: keep - len(head)]
                if d.eof:
                    chunk, d, complete = d.unused_data, None, True
                else:
                    chunk = b""
    return total, head, complete


# ------------------------------------------------------------------ NRRD
def _read_text_header(path: Path, stop) -> tuple[list[str], int]:
    """Header lines (decoded) up to and including the line where ``stop(line)`` is true; and the byte offset
    just after it."""
    lines, offset = [], 0
    with open(path, "rb") as fh:
        for raw in fh:
            offset += len(raw)
            line = raw.decode("latin-1").rstrip("\r\n")
            lines.append(line)
            if stop(line) or offset > 1 << 20:
                break
    return lines, offset


def _check_nrrd(path: Path, what: str) -> None:
    lines, offset = _read_text_header(path, lambda line: line == "")
    if not lines or not lines[0].startswith("NRRD"):
        return
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.lstrip("=").strip()
    sizes = [int(s) for s in fields["sizes"].split()]
    nbytes = int(np.prod(sizes, dtype=np.int64)) * NRRD_TYPE_BYTES[fields["type"].lower()]
    encoding = fields.get("encoding", "raw").lower()
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is not None:
        if " " in data_file or "%" in data_file or data_file.upper().startswith("LIST"):
            return  # several data files: left to the reader
        data, start = path.parent / data_file, 0
        if not data.is_file():
            raise ECFusionError(f"{what} {path}: its data file {data} (named in the header) is missing; "
                                "copy the .nhdr together with its data file")
    else:
        data, start = path, offset
    if int(fields.get("line skip", fields.get("lineskip", "0"))) != 0:
        return
    skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
    if skip < 0:
        return
    start += skip
    if encoding == "raw":
        have = data.stat().st_size - start
        if have < nbytes:
            raise _short(what, path if data == path else data, nbytes, max(have, 0))
    elif encoding in ("gzip", "gz"):
        total, _, complete = _gunzip_count(data, start)
        if not complete:
            raise _cut(what, path if data == path else data, "its gzip-compressed voxel data ends early")
        if total < nbytes:
            raise _short(what, path if data == path else data, nbytes, total, "bytes of voxel data (gzip)")


# ------------------------------------------------------------------ MetaImage
def _check_meta(path: Path, what: str) -> None:
    lines, offset = _read_text_header(path, lambda line: line.replace(" ", "").lower().startswith("elementdatafile="))
    fields = {}
    for line in lines:
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip().lower()] = value.strip()
    if "elementdatafile" not in fields or "dimsize" not in fields:
        return
    dims = [int(s) for s in fields["dimsize"].split()]
    channels = int(fields.get("elementnumberofchannels", "1"))
    nbytes = int(np.prod(dims, dtype=np.int64)) * channels * MET_TYPE_BYTES[fields["elementtype"].upper()]
    name = fields["elementdatafile"]
    if name.upper() == "LOCAL":
        data, start = path, offset
    elif " " in name or "%" in name or name.upper().startswith("LIST"):
        return
    else:
        data, start = path.parent / name, 0
        if not data.is_file():
            raise ECFusionError(f"{what} {path}: its data file {data} (ElementDataFile in the header) is missing; "
                                "copy the .mhd together with its data file")
    header_size = int(fields.get("headersize", "0"))
    if header_size > 0:
        start += header_size
    have = data.stat().st_size - start
    shown = path if data == path else data
    if fields.get("compresseddata", "false").lower() == "true":
        expected = int(fields.get("compresseddatasize", "0"))
        if expected and have < expected:
            raise _short(what, shown, expected, max(have, 0), "bytes of compressed voxel data")
        d = zlib.decompressobj()
        total = 0
        with open(data, "rb") as fh:
            fh.seek(start)
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                try:
                    total += len(d.decompress(chunk))
                except zlib.error:
                    break
                if d.eof:
                    break
        if not d.eof or total < nbytes:
            raise _short(what, shown, nbytes, total, "bytes of voxel data (zlib)")
    elif have < nbytes:
        raise _short(what, shown, nbytes, max(have, 0))

