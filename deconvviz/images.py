"""Images in and out: load any image file as upright 8-bit RGB, batch it for a network, and display results."""

from __future__ import annotations

import errno
import io
import math
import os
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from torch import Tensor

from .errors import ImageError
from .outputs import open_regular
from .preprocess import Preprocess

DEFAULT_IMAGE = Path(str(resources.files("deconvviz") / "data" / "bicycle.jpg"))
MIN_SIZE = 32  # smallest accepted image side in pixels

ImageSource = str | os.PathLike | Image.Image
_FORMATS = "expected a JPEG, PNG, BMP, WebP or TIFF file"


def _scaled_to_8bit(img: Image.Image) -> Image.Image:
    """Integer and float modes to 8-bit grey, scaled by the real range of the data.

    I;16*: 16-bit, v / 65535 * 255. I (32-bit): values up to 255 are taken as 8-bit, up to 65535 as
    16-bit (how some readers store 16-bit data), larger by the image's max. F: clipped to [0, 1] when
    the max is at most 1, else divided by the max. Negative values become 0.
    """
    a = np.asarray(img)
    top = float(a.max()) if a.size else 0.0
    if img.mode.startswith("I;16"):
        full = 65535.0
    elif img.mode == "F":
        full = 1.0 if top <= 1 else top
    else:
        full = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    out = np.empty(a.shape, np.uint8)
    for i in range(0, len(a), _BAND):  # a band of rows at a time: no float copy of a large image
        out[i : i + _BAND] = np.rint(np.clip(a[i : i + _BAND].astype(np.float64) / full, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


_BAND = 512  # rows scaled at once by _scaled_to_8bit


def _rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited over white."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, "white"), rgba).convert("RGB")
    if img.mode == "CMYK" and img.info.get("icc_profile"):
        try:  # an embedded profile says what the inks mean; PIL's plain convert ignores it
            src = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    if img.mode.startswith("I") or img.mode == "F":
        img = _scaled_to_8bit(img)
    return img.convert("RGB")


REDUCE_ABOVE = 4  # a file decoded at reduced scale when its shorter side is this many times the input side or more


def _reduced(img: Image.Image, fit: int | None) -> Image.Image:
    """A large image read at reduced size before anything else touches it: JPEG decoded at 1/2, 1/4 or 1/8 scale
    (draft), others reduced by a whole factor (box filter) right after decoding; the shorter side stays at least
    REDUCE_ABOVE * fit, so the resize to `fit` that follows still has REDUCE_ABOVE times the pixels it needs."""
    if fit is None or min(img.size) < 2 * REDUCE_ABOVE * fit:
        img.load()
        return img
    w, h = img.size
    least = REDUCE_ABOVE * fit / min(w, h)
    if img.format == "JPEG":
        img.draft(img.mode, (math.ceil(w * least), math.ceil(h * least)))
    img.load()
    factor = min(img.size) // (REDUCE_ABOVE * fit)
    if factor < 2:
        return img
    try:
        return img.reduce(factor)
    except ValueError:  # a mode reduce does not take (palette, 1-bit, 16-bit grey): converted first
        eight_bit = _scaled_to_8bit(img) if img.mode.startswith("I;16") else _rgb(img)  # grey stays one channel
        return eight_bit.reduce(factor)


def load_image(source: ImageSource, *, fit: int | None = None) -> Image.Image:
    """Any PIL image or image file to a new 8-bit RGB image, upright (EXIF orientation applied).

    Transparent pixels become white. A PIL image passed in is not modified. fit: the side the image will be
    resized to; a file much larger than that is decoded at reduced size (`_reduced`). Raises ImageError.
    """
    if isinstance(source, Image.Image):
        label = f"<{source.mode} PIL image>"
        out = _rgb(ImageOps.exif_transpose(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = f"'{path}'"
        if not path.exists():
            raise ImageError(f"image not found: '{path}'; check the path")
        if path.is_dir():
            raise ImageError(f"image '{path}' is a directory; give an image file")
        try:
            # large photos are fine: they are reduced and resized; PIL's hard limit still raises
            # DecompressionBombError. The warning comes from Image.open, so it is silenced around it.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with open_regular(path) as f, Image.open(f) as img:
                    out = _rgb(ImageOps.exif_transpose(_reduced(img, fit)))  # always a new image, safe after close
                    out.load()
        except Image.DecompressionBombError as e:
            raise ImageError(f"cannot read image '{path}': {e}; downscale it first") from e
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EISDIR):  # a named pipe, a device (outputs.open_regular)
                raise ImageError(f"cannot read image '{path}': {e.strerror}; give an image file") from None
            if isinstance(e, UnidentifiedImageError):  # PIL's message quotes the file object: say it plainly
                raise ImageError(f"cannot read image '{path}': not an image file PIL knows; {_FORMATS}") from None
            raise ImageError(f"cannot read image '{path}': {e}; {_FORMATS}") from e
        except (SyntaxError, ValueError) as e:
            raise ImageError(f"cannot read image '{path}': {e}; {_FORMATS}") from e
    else:
        raise ImageError(f"expected an image file path or a PIL image, got {type(source).__name__}")
    w, h = out.size
    if min(w, h) < MIN_SIZE:
        raise ImageError(
            f"image {label} is {w}x{h} pixels; at least {MIN_SIZE}x{MIN_SIZE} are needed; use a larger image"
        )
    return out


def to_tensor(image: ImageSource, *, fit: int | None = None) -> Tensor:
    """An image (anything load_image takes; fit: as there) to RGB float in [0, 1]. Returns (3, H, W).
    One float copy: the bytes are laid out as planes first, then turned to float and scaled in place."""
    planes = np.ascontiguousarray(np.asarray(load_image(image, fit=fit)).transpose(2, 0, 1))  # (3, H, W) uint8
    return torch.from_numpy(planes).to(torch.float32).div_(255.0)


def resize_crop_geometry(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Where an h x w image goes in `_resize_crop`: resized to (nh, nw), then cut at (top, left)."""
    nh, nw = (size, max(size, round(w * size / h))) if h <= w else (max(size, round(h * size / w)), size)
    return nh, nw, (nh - size) // 2, (nw - size) // 2


def _resize_crop(t: Tensor, size: int) -> Tensor:
    """Shorter side to `size` (bicubic, antialiased), then the centre `size` x `size` square. (3, H, W)."""
    h, w = t.shape[-2:]
    nh, nw, top, left = resize_crop_geometry(h, w, size)
    if (nh, nw) != (h, w):
        t = F.interpolate(t[None], size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0]
        t = t.clamp(0, 1)  # bicubic overshoots at edges; an image stays in [0, 1]
    return t[:, top : top + size, left : left + size]


def check_size(size: int | None) -> None:
    """The network input side must be at least MIN_SIZE pixels (None: each image's own size)."""
    if size is not None and size < MIN_SIZE:
        raise ImageError(f"input size {size} is too small; use {MIN_SIZE} or more (224 is VGG's own)", about="size")


def to_batch(
    images: Sequence[ImageSource] | ImageSource,
    preprocess: Preprocess,
    size: int | None = 224,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Images to a preprocessed network input batch. Returns (N, 3, size, size).

    Each image's shorter side is resized to `size` and the centre square cropped. `size=None` keeps
    the images' own size, which must then be the same for all.
    """
    check_size(size)
    items = [images] if isinstance(images, (str, os.PathLike, Image.Image)) else list(images)
    if not items:
        raise ImageError("no images given; pass at least one image path or PIL image")
    ts = [to_tensor(i, fit=size) for i in items]
    if size is None:
        sizes = sorted({f"{t.shape[2]}x{t.shape[1]}" for t in ts})
        if len(sizes) > 1:
            raise ImageError(f"images have different sizes ({', '.join(sizes)}); pass a size to resize them")
    else:
        ts = [_resize_crop(t, size) for t in ts]
    work = torch.promote_types(dtype, torch.float32)  # preprocess in at least float32, then cast
    return preprocess.to_input(torch.stack(ts).to(device=device, dtype=work)).to(dtype)


def centred(r: Tensor, percentile: float = 99.5) -> Tensor:
    """Display normalization "centred": 0.5 + r / (2 s), clipped to [0, 1], zero at mid-grey.

    s is the `percentile` of |r| over each image's pixels and channels (the last three dims), so a
    few extreme pixels do not wash out the rest. An all-zero image becomes uniform 0.5 grey.
    """
    a = r.detach().abs().flatten(-3).double().sort(dim=-1).values  # (..., C*H*W)
    pos = percentile / 100 * (a.shape[-1] - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    s = a[..., lo] + (pos - lo) * (a[..., hi] - a[..., lo])
    s = torch.where(s > 0, s, a[..., -1])  # mostly-zero r: fall back to the max
    s = torch.where(s > 0, s, torch.ones_like(s)).to(r.dtype)[..., None, None, None]
    return (0.5 + r / (2 * s)).clamp(0, 1)


def to_display(x: Tensor, preprocess: Preprocess, *, pattern: bool = False) -> np.ndarray:
    """One network-input-space image (3, H, W) or (1, 3, H, W) to (H, W, 3) float32 in [0, 1].

    `pattern=False`: an input image, preprocessing undone exactly, then clipped to [0, 1].
    `pattern=True`: a reconstruction (a direction in input space), shown with `centred`.
    """
    x = x.detach()
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise ImageError(f"expected one image of shape (3, H, W), got {tuple(x.shape)}")
    rgb = preprocess.to_rgb(x.float(), pattern=pattern)
    y = centred(rgb) if pattern else rgb.clamp(0, 1)
    return y.permute(1, 2, 0).cpu().numpy()
