"""Writing files without ever losing or half-writing one: the single place for atomic writes.

    atomic_write(path, lambda tmp: sitk.WriteImage(img, tmp))          # one file
    atomic_write_group({vol: write_vol, side: write_json})              # a volume and its sidecar, together
    refuse_overwriting_inputs(output, [mri, pet])                        # before any work

Every write goes to a temporary name in the target's folder (``.NAME.ecfusion-partial-PID-RANDOM.EXT``), is
given the mode a plain ``open()`` would give (``0666 & ~umask``; ``mkstemp`` alone gives 0600), flushed to the
disk (``fsync``), and renamed into place with ``os.replace`` (atomic on one file system). Writers check what they
wrote before that (images: ``volume_io.verify_written``; text: ``write_text_verified``): a writer that fails
without a word (ITK's NIfTI writer on a full disk) never replaces the previous file. On any error -- disk full, Ctrl-C, SIGTERM (see
``install_sigterm_handler``) -- the temporaries are removed and the target is untouched. Only SIGKILL or a
power cut can leave a temporary behind; its name carries the writer's process id, and the next write into
that folder removes temporaries whose process is gone (``remove_stale_temporaries``).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable

from .errors import ECFusionError

MARKER = ".ecfusion-partial-"
_STALE = re.compile(r"^\..*" + re.escape(MARKER) + r"(\d+)-")
_ACTIVE: set[str] = set()  # temporaries being written by this process (removed on SIGTERM too)
_LOCK = threading.Lock()


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file under the current umask (0644 under umask 022)."""
    try:  # Linux: read it without changing it (os.umask is process-wide and racy with threads)
        for line in open("/proc/self/status"):
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name one file: equal resolved paths (``sub/../x``, symlinks), or the same
    inode (hard links, bind mounts; ``os.path.samefile``). A path that does not exist is compared by name."""
    a, b = Path(a), Path(b)
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):  # symlink loops
        pass
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_inputs(output: str | Path, inputs: Iterable[str | Path | None], what: str = "output") -> Path:
    """ECFusionError if ``output`` is (resolves to, or is a link to) one of ``inputs``; returns ``Path(output)``."""
    for src in inputs:
        if src is not None and same_file(output, src):
            raise ECFusionError(f"{what} {output} is the input file {src}: writing it would destroy the input. "
                                "Choose another output name.")
    return Path(output)


def temporary_name(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (same folder, so that the rename is atomic), keeping its suffix."""
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{MARKER}{os.getpid()}-", suffix=suffix, dir=path.parent or ".")
    os.close(fd)
    tmp = _key(tmp)
    with _LOCK:
        _ACTIVE.add(tmp)
    return Path(tmp)


def _key(path: str | Path) -> str:
    """The name a temporary is known by in ``_ACTIVE``: absolute (not resolved), so that a folder listed by a
    relative name (``--output fused.nii.gz``) and the temporary's own name compare equal."""
    return os.path.abspath(path)


def _discard(tmp: Path) -> None:
    with _LOCK:
        _ACTIVE.discard(_key(tmp))
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove temporaries left in ``folder`` by ECFusion processes that no longer run (killed by SIGKILL or a
    power cut). Returns what was removed. Temporaries of running processes are left alone."""
    removed = []
    try:
        entries = list(Path(_key(folder)).iterdir())  # absolute names, as in _ACTIVE
    except OSError:
        return removed
    for p in entries:
        m = _STALE.match(p.name)
        if not m or not p.is_file():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() and _key(p) in _ACTIVE:
            continue
        if pid != os.getpid() and _process_alive(pid):
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write ``path`` atomically: ``write(tmp_name)`` writes the content to a temporary name, which is then
    given the umask's mode and renamed onto ``path``. Returns ``Path(path)``."""
    path = Path(path)
    atomic_write_group({path: write})
    return path


def atomic_write_group(writers: dict[Path, Callable[[str], None]]) -> list[Path]:
    """Write several files so that none appears without the others: every temporary is written first (a disk
    full or an interruption then leaves nothing), then they are renamed into place in order (renames need no
    space). Put the main file last: a crash between renames leaves at most the small companions."""
    paths = [Path(p) for p in writers]
    for p in paths:
        if p.is_dir():
            raise ECFusionError(f"output {p} is an existing folder; give a file name")
    temps: list[Path] = []
    try:
        for p, write in writers.items():
            p = Path(p)
            remove_stale_temporaries(p.parent if str(p.parent) else ".")
            tmp = temporary_name(p)
            temps.append(tmp)
            try:
                write(str(tmp))
                _sync(tmp)
            except OSError as exc:
                raise ECFusionError(f"cannot write {p}: {exc.strerror or exc}{disk_full_hint(p)}; nothing was "
                                    "written") from exc
            except RuntimeError as exc:  # SimpleITK and torch report I/O failures as RuntimeError
                last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                raise ECFusionError(f"cannot write {p}: {last}{disk_full_hint(p)}; nothing was written") from exc
            os.chmod(tmp, file_mode())
        for tmp, p in zip(temps, paths):
            os.replace(tmp, p)
            with _LOCK:
                _ACTIVE.discard(_key(tmp))
    except BaseException:
        for tmp in temps:
            _discard(tmp)
        raise
    return paths


LOW_SPACE = 64 << 20  # bytes: below this, a failed write is most likely a full disk


def disk_full_hint(path: str | Path) -> str:
    """A note for a failed write, "(the disk is probably full: N MB free ...)", when ``path``'s file system has
    little room left (< ``LOW_SPACE``); else "". """
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    if free >= LOW_SPACE:
        return ""
    return f" (the disk is probably full: {free / 1e6:.1f} MB free on the disk holding {folder})"


def _sync(tmp: Path) -> None:
    """Flush the temporary to the disk before it may replace anything: a write error the kernel reports late
    (NFS, quotas, a full disk behind a cache) surfaces here, while the previous file is still in place."""
    try:
        fd = os.open(tmp, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # a file system without fsync
            raise
    finally:
        os.close(fd)


def write_text_verified(tmp: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``tmp`` and read it back: OSError (EIO) unless every byte arrived (the caller,
    ``atomic_write_group``, turns it into "cannot write ...; nothing was written")."""
    Path(tmp).write_text(text, encoding="utf-8")
    if Path(tmp).read_bytes() != text.encode("utf-8"):
        raise OSError(errno.EIO, "the file does not read back as written (is the disk full?)")


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: write_text_verified(tmp, text))


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so that ``finally``/``except BaseException`` clean-up runs exactly
    as for Ctrl-C."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


def install_sigterm_handler() -> None:
    """Turn SIGTERM into ``Terminated`` (a KeyboardInterrupt) in the main thread; no-op elsewhere."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def sha256_files(files: Iterable) -> str:
    """One SHA-256 (hex) over the files' contents, in order (one file: its own digest; a DICOM series: its files
    sorted by position)."""
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
