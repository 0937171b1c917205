"""What deconvviz writes, and how: owned folders, one writer at a time, build then swap, checked input files.

Every command that writes a folder (scan, site, explore) takes `locked(out)` (an OS lock on `.NAME.deconvviz-lock`
beside the folder, dropped by the kernel on exit, crash or kill -9), writes only into a folder that is new,
empty or marked as its own (`owned`), builds its result in `.NAME.deconvviz-new` beside it and swaps it in whole
(`Staged`). Single files go through `write_files`: a temp file beside each, renamed over it. Input files are
opened with `open_regular`, which never blocks on a named pipe or a device.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from .errors import DeconvvizError

SCAN_MARKER = ".deconvviz-scan.json"  # makes a folder a scan's own: a later scan may resume or replace it
SITE_MARKER = ".deconvviz-site.json"  # the same for a site (scan site, explore)
PARTIAL = ".deconvviz-partial"  # suffix of the one temp file of a file written under the lock (exact name)


# ------------------------------------------------------------------------------------------------- input files


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a device"))
    kinds += ((stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def irregular(path: str | os.PathLike) -> str | None:
    """Why `path` is not a regular file to read (a dangling link, a named pipe, a device, ...); None when it is."""
    try:
        mode = os.stat(path).st_mode  # follows links: a link to a photo is a photo
    except FileNotFoundError:
        return "a dangling link" if os.path.islink(path) else "not found"
    except OSError as e:
        return e.strerror or str(e)
    return None if stat.S_ISREG(mode) else _kind(mode)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for reading if it is a regular file; a named pipe or a device is refused, never waited on.
    The file keeps `path` as its name (messages that quote it name the file, not a descriptor number).
    Raises OSError (FileNotFoundError, IsADirectoryError, or errno EINVAL with the reason)."""
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # a pipe opened without a writer: no wait
    f = open(path, "rb", opener=lambda p, flags: os.open(p, flags | nonblocking))  # noqa: SIM115 - returned
    try:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            error = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
            raise OSError(error, f"{_kind(mode)}, not a regular file", os.fsdecode(path))
        os.set_blocking(f.fileno(), True)
        return f
    except BaseException:
        f.close()
        raise


# --------------------------------------------------------------------------------------------- single files


def check_target(path: str | os.PathLike) -> None:
    """A file can be made at `path`: it is no folder, and no file stands where one of its folders should be."""
    path = Path(path)
    if path.is_dir():
        raise DeconvvizError(f"cannot write '{path}': it is a folder; choose another path", about="out")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DeconvvizError(
                    f"cannot write '{path}': '{parent}' is a file, not a folder; choose another path", about="out"
                )
            break


def check_writable(path: str | os.PathLike) -> None:
    """A file can be created in the folder of `path` (or, when it does not exist yet, the nearest folder above):
    tried with a temp file, removed at once, so an unwritable output path fails before any work."""
    path = Path(path)
    folder = next((p for p in path.absolute().parents if p.exists()), None)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise DeconvvizError(f"cannot write '{path}': {e.strerror}; choose another path", about="out") from None


def check_folder(out: str | os.PathLike) -> None:
    """A folder can be made or written at `out`: tried with a temp file in the nearest existing folder at or
    above it, removed at once, so an unwritable output folder fails before any work."""
    out = Path(out)
    near = next((p for p in (out.absolute(), *out.absolute().parents) if p.exists() or p.is_symlink()), None)
    try:
        if near is not None and not near.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"'{near}' is a file, not a folder")
        tempfile.TemporaryFile(dir=near).close()
    except OSError as e:
        raise DeconvvizError(
            f"cannot write to '{out}': {e.strerror or e}; give a writable folder", about="out"
        ) from None


def missing_folders(path: str | os.PathLike) -> Path | None:
    """The outermost folder above `path` (itself included) that does not exist yet: what a failure removes."""
    made = [d for d in (Path(path), *Path(path).parents) if not d.exists() and not d.is_symlink()]
    return made[-1] if made else None


def _remove_empty(folder: Path | None, below: Path) -> None:
    """Remove `below` and its parents up to `folder` where they are empty (folders a failed write made)."""
    if folder is None:
        return
    for d in (below, *below.parents):
        if not d.is_relative_to(folder):
            break
        with contextlib.suppress(OSError):
            d.rmdir()


def write_atomic(path: Path, write) -> None:
    """Call write(file) on a temp file beside `path`, then rename it over `path`: never a half-written file."""
    write_files({Path(path): write})


def write_files(writers: dict) -> None:
    """{path: write(file)}: each written to a temp file beside its path, then all renamed into place, so a
    failure leaves no half-written file, no file of the set without the others, and no folder it made."""
    temps: list[str] = []
    path = next(iter(writers), None)
    made = {p: missing_folders(Path(p).parent) for p in writers}
    try:
        for path in writers:
            check_target(path)
        for path, write in writers.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.chmod(tmp, 0o644)
        for path, tmp in zip(writers, temps, strict=True):
            os.replace(tmp, path)
        temps.clear()
    except OSError as e:
        raise DeconvvizError(f"cannot write '{path}': {e.strerror or e}; choose another path", about="out") from None
    finally:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        if temps:  # failed: the folders this call made go too
            for p, top in made.items():
                _remove_empty(top, Path(p).parent)


def write_locked(path: Path, write) -> None:
    """write_atomic for a file in a folder this process holds `locked`: its temp file has one exact name,
    `.NAME.deconvviz-partial`, so that a killed run's leftover is found and removed by that name."""
    tmp = partial_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DeconvvizError(f"cannot write '{path}': {e.strerror or e}; choose another path", about="out") from None


def partial_name(path: Path) -> Path:
    return path.parent / f".{path.name}{PARTIAL}"


# ------------------------------------------------------------------------------------------------ provenance


RECORD = ".provenance.json"  # the end of a figure's provenance file's name


def provenance_path(figure: str | os.PathLike) -> Path:
    """Where a figure's provenance goes: `NAME.EXT.provenance.json`, one record per figure file (so `fig.png` and
    `fig.pdf` sit side by side), a name no input of deconvviz reads (an image's regions are `IMAGE.json` beside
    it: `photo.jpg.json`)."""
    figure = Path(figure)
    return figure.with_name(f"{figure.name}{RECORD}")


def old_provenance_path(figure: str | os.PathLike) -> Path:
    """Where earlier versions put a figure's provenance: `NAME.provenance.json`, one per stem. Still read."""
    figure = Path(figure)
    return figure.with_name(f"{figure.stem}{RECORD}")


def _figure_named(provenance: Path) -> str | None:
    """The figure a provenance file deconvviz wrote names (a JSON object with `figure` and `command`), else None."""
    try:
        with open_regular(provenance) as f:
            data = json.loads(f.read(1 << 24))
    except (OSError, ValueError):
        return None
    ours = isinstance(data, dict) and isinstance(data.get("figure"), str) and "command" in data
    return data["figure"] if ours else None


def written_by_deconvviz(provenance: Path, figure: Path) -> bool:
    """`provenance` is a provenance file deconvviz wrote for `figure` (a JSON object naming it)."""
    return _figure_named(provenance) == Path(figure).name


def _records_of_stem(figure: Path) -> bool:
    """Some figure `NAME.*` beside `figure` has a provenance deconvviz wrote (new or old name): the tables beside
    a figure (`NAME.csv`) are shared by its formats, so they are deconvviz's own when such a record is there."""
    stem, folder = figure.stem, figure.parent
    if not folder.is_dir():
        return False
    for entry in folder.iterdir():
        if not (entry.name.startswith(f"{stem}.") and entry.name.endswith(RECORD)):
            continue
        shown = _figure_named(entry)
        if shown is not None and Path(shown).stem == stem:
            if entry in (provenance_path(folder / shown), old_provenance_path(folder / shown)):
                return True
    return False


def check_beside(figure: str | os.PathLike, others: Iterable[Path]) -> None:
    """The files written beside a figure (its provenance, tables) replace only files deconvviz wrote there: its
    provenance only when that names this figure, a table (`NAME.csv`) only when some figure `NAME.*` beside it has
    deconvviz's provenance (its formats share the table)."""
    figure = Path(figure)
    meta = provenance_path(figure)
    refused = [meta] if (meta.exists() or meta.is_symlink()) and not written_by_deconvviz(meta, figure) else []
    taken = [p for p in others if p.exists() or p.is_symlink()]
    refused += taken if taken and not _records_of_stem(figure) else []
    if refused:
        raise DeconvvizError(
            f"'{refused[0]}' exists and was not written by deconvviz for '{figure.name}'; it would be overwritten: "
            "move it, or choose another output path",
            about="out",
        )


def forget_old_provenance(figure: str | os.PathLike) -> None:
    """Remove the old-named record (`NAME.provenance.json`) of exactly this figure once its new one is written:
    it describes the figure just replaced. A record of another format (`NAME.pdf`) or not deconvviz's stays."""
    old = old_provenance_path(figure)
    if old != provenance_path(figure) and written_by_deconvviz(old, Path(figure)):
        old.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- owned folders


def _listing(out: Path) -> list[str]:
    """Every file, link and other non-folder entry under `out`, relative POSIX paths (folders are walked)."""
    found = []
    for top, dirs, files in os.walk(out):
        here = Path(top)
        for name in [*files, *(d for d in dirs if (here / d).is_symlink())]:
            found.append((here / name).relative_to(out).as_posix())
    return found


def owned(out: str | os.PathLike, marker: str, *, what: str, allowed: Iterable[str] = ()) -> dict | None:
    """Check that deconvviz may write `out`: new, empty, or marked by `marker` and holding nothing but the
    files that marker lists (and `allowed`). Returns the marker's data, None for a new or empty folder."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        kind = "a link" if out.is_symlink() else "a file"
        raise DeconvvizError(f"cannot write {what} to '{out}': it is {kind}; give a folder", about="out")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    path = out / marker
    if not path.is_file():
        raise DeconvvizError(
            f"'{out}' is not empty and holds no deconvviz {what}; give a new or empty folder", about="out"
        )
    try:
        data = json.loads(path.read_text())
        listed = {*data["files"], marker, *allowed}
    except (OSError, ValueError, KeyError, TypeError):
        raise DeconvvizError(f"'{path}' is unreadable; delete '{out}' or give another folder", about="out") from None
    foreign = [f for f in _listing(out) if f not in listed and not _partial_of(f, listed)]
    if foreign:
        raise DeconvvizError(
            f"'{out}' holds '{foreign[0]}' ({len(foreign)} file(s) in all), which deconvviz did not write; "
            "move them out, or give another folder",
            about="out",
        )
    return data


def _partial_of(rel: str, listed: set[str]) -> bool:
    """A leftover temp file of a listed file (write_locked's exact name)."""
    folder, _, name = rel.rpartition("/")
    if not (name.startswith(".") and name.endswith(PARTIAL)):
        return False
    return f"{folder}/{name[1 : -len(PARTIAL)]}".lstrip("/") in listed


def remove_partials(out: Path, names: Iterable[str]) -> None:
    """Remove a killed run's temp files of these files of `out`, by their exact names."""
    for rel in names:
        partial_name(out / rel).unlink(missing_ok=True)


def _sibling(out: Path, what: str) -> Path:
    return out.parent / f".{out.name}.deconvviz-{what}"


# ----------------------------------------------------------------------------------------------------- locks


_HELD: dict[Path, int] = {}  # lock files this process holds, and how many holders inside it (the CLI, then the API)


class Lock:
    """An exclusive OS lock (flock) on `.NAME.deconvviz-lock` beside `out`. The kernel drops it when the process
    ends, however it ends; the file says who holds it, and is removed on release. Reentrant within a process."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = _sibling(self.out.absolute(), "lock")
        self.fd: int | None = None
        self.made: Path | None = None
        self.inner = False

    def acquire(self) -> Lock:
        import fcntl

        if self.path in _HELD:
            _HELD[self.path] += 1
            self.inner = True
            return self
        self.made = missing_folders(self.path.parent)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another deconvviz"
                    os.close(fd)
                    self._undo_folders()
                    raise DeconvvizError(
                        f"'{self.out}' is being written by {holder}; wait for it to end, or give another folder",
                        about="out",
                    ) from None
                try:  # the holder before us may have removed the file as we opened it: lock the one on disk
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
        except OSError as e:
            self._undo_folders()
            raise DeconvvizError(
                f"cannot write to '{self.out}': {e.strerror or e}; give a writable folder", about="out"
            ) from None
        command = " ".join(["deconvviz", *sys.argv[1:]]) if sys.argv else "deconvviz"
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({command[:200]}, since {since})\n".encode("utf-8", "replace"))
        self.fd, _HELD[self.path] = fd, 1
        return self

    def release(self) -> None:
        if self.inner:
            _HELD[self.path] -= 1
            self.inner = False
            return
        if self.fd is None:
            return
        del _HELD[self.path]
        self.path.unlink(missing_ok=True)  # while still held: no one else's lock file is removed
        os.close(self.fd)
        self.fd = None

    def _undo_folders(self) -> None:
        _remove_empty(self.made, self.path.parent)

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
        if exc[0] is not None and not self.out.exists():
            self._undo_folders()  # a refused or failed first run leaves no empty runs/ folder


def locked(out: str | os.PathLike) -> Lock:
    """`with locked(out):` one writer at a time on the folder `out`; a second is refused in one line."""
    return Lock(out)


# ------------------------------------------------------------------------------------------- build, then swap


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fsdecode(a))


def recover(out: str | os.PathLike) -> None:
    """Finish or undo a swap that a kill interrupted (call under the lock): the old result back where the new
    was not yet in place, and this folder's own temporaries (by their exact names) removed."""
    out = Path(out)
    old, new = _sibling(out, "old"), _sibling(out, "new")
    if old.is_dir() and not old.is_symlink():
        if out.exists():
            shutil.rmtree(old)
        else:
            os.rename(old, out)
    if new.is_dir() and not new.is_symlink():
        shutil.rmtree(new)


class Staged:
    """A new result built in `.NAME.deconvviz-new` beside `out`, then swapped in whole: an interruption at any
    point leaves the old result or the new one, never a mix. Use under `locked(out)`."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.new = _sibling(self.out, "new")

    def __enter__(self) -> Path:
        recover(self.out)
        try:
            self.new.mkdir(parents=True)
        except OSError as e:
            raise DeconvvizError(
                f"cannot write to '{self.out.parent}': {e.strerror or e}; give a writable folder", about="out"
            ) from None
        return self.new

    def __exit__(self, kind, *_) -> None:
        if kind is not None:
            shutil.rmtree(self.new, ignore_errors=True)
            return
        try:
            self._swap()
        except OSError as e:
            shutil.rmtree(self.new, ignore_errors=True)
            raise DeconvvizError(f"cannot replace '{self.out}': {e.strerror or e}", about="out") from None

    def _swap(self) -> None:
        if not self.out.exists():
            os.rename(self.new, self.out)
        elif _exchange(self.new, self.out):
            shutil.rmtree(self.new)  # now the old result
        else:
            old = _sibling(self.out, "old")
            os.rename(self.out, old)
            os.rename(self.new, self.out)  # killed between the two: recover() puts the old one back
            shutil.rmtree(old)
