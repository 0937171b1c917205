"""The files a scan reads: the image files under a folder in the scan's fixed order (never a folder deconvviz wrote,
never a file that is not regular), each preprocessed as the scan reads it, and the folder's fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DeconvvizError, ImageError
from ..images import to_batch
from ..outputs import (
    SCAN_MARKER,
    SITE_MARKER,
    irregular,
    open_regular,
)
from ..preprocess import Preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_files(folder: str | os.PathLike) -> list[str]:
    """Every image under `folder` (recursive, by suffix) as sorted relative POSIX paths: the scan's fixed order."""
    return listed_images(folder)[0]


def listed_images(folder: str | os.PathLike, out: str | os.PathLike | None = None) -> tuple[list[str], list[dict]]:
    """The image files under `folder` (recursive, by suffix; sorted relative POSIX paths, names in any encoding)
    and those that are no regular file ({"path", "reason"}: a dangling link, a named pipe, ...). Folders that
    deconvviz wrote (`out`, a scan, a site, their temporaries) are not read: a scan never reads its own figures."""
    root = Path(folder)
    if not root.is_dir():
        raise ImageError(f"'{folder}' is not a folder; give a folder of images (read recursively)")
    own = Path(out).resolve() if out is not None else None
    files, odd = [], []
    for top, dirs, names in os.walk(root):
        here = Path(top)
        dirs[:] = [d for d in dirs if not _written_by_deconvviz(here / d, own)]
        for name in names:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                rel = (here / name).relative_to(root).as_posix()
                why = irregular(here / name)
                files.append(rel) if why is None else odd.append({"path": rel, "reason": f"{why}, not an image"})
    if not files and not odd:
        raise ImageError(f"no images under '{folder}'; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    return sorted(files), sorted(odd, key=lambda s: s["path"])


def _written_by_deconvviz(folder: Path, out: Path | None) -> bool:
    if folder.name.startswith(".") and folder.name.endswith((".deconvviz-new", ".deconvviz-old")):
        return True  # a build of deconvviz beside its folder (outputs.Staged)
    return (folder / SCAN_MARKER).is_file() or (folder / SITE_MARKER).is_file() or folder.resolve() == out


def preprocessed(path: Path, preprocess: Preprocess, size: int) -> Tensor:
    """One image file as network input, exactly as the scan reads it (`to_batch` on CPU). (3, size, size)."""
    return to_batch(path, preprocess, size)[0]


class ImageFiles(Dataset):
    """The scanned files, preprocessed; an unreadable one gives (None, index, reason) instead of failing."""

    def __init__(self, root: Path, files: list[str], preprocess: Preprocess, size: int):
        self.root, self.files, self.preprocess, self.size = root, files, preprocess, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor | None, int, str | None]:
        try:
            return preprocessed(self.root / self.files[i], self.preprocess, self.size), i, None
        except Exception as e:  # noqa: BLE001 - one bad file never stops a scan; the reason goes into the report
            return None, i, str(e) if isinstance(e, DeconvvizError) else f"{type(e).__name__}: {e}"


def _collate(items: list) -> tuple[Tensor | None, Tensor, list[tuple[int, str]]]:
    """A batch of the readable images (B, 3, H, W) with their indices (B,), and the unreadable (index, reason)."""
    good = [(t, i) for t, i, _ in items if t is not None]
    x = torch.stack([t for t, _ in good]) if good else None
    return x, torch.tensor([i for _, i in good], dtype=torch.long), [(i, why) for t, i, why in items if t is None]


def _unreadable(path: Path) -> str | None:
    """Why an image file's header does not read (a quick look, not a decode); None when it reads."""
    from PIL import Image

    try:
        with open_regular(path) as f, Image.open(f):
            return None
    except Exception as e:  # noqa: BLE001 - any reason is the file's, said in the message
        return f"{type(e).__name__}: {e}"


def _fingerprint(root: Path, files: list[str]) -> str:
    """The file list and sizes: a resumed scan must see the same images in the same order. Names in any
    encoding are taken as the bytes the system gives (os.fsencode); a file gone since the listing counts -1."""
    digest = hashlib.sha256()
    for f in files:
        try:
            size = (root / f).stat().st_size
        except OSError:
            size = -1
        digest.update(os.fsencode(f) + f"\t{size}\n".encode())
    return digest.hexdigest()
