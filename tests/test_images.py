import numpy as np
import pytest
import torch
from PIL import Image

from deconvviz.errors import ImageError
from deconvviz.images import DEFAULT_IMAGE, MIN_SIZE, centred, load_image, to_batch, to_display, to_tensor
from deconvviz.preprocess import Preprocess

TORCHVISION = Preprocess(name="t", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CAFFE = Preprocess(name="c", mean=(103.939, 116.779, 123.68), scale=255.0, bgr=True)


def saved(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def px(img: Image.Image, xy=(0, 0)):
    return tuple(img.getpixel(xy))


@pytest.mark.parametrize(
    "mode, value, ext, expected",
    [
        ("RGB", (10, 20, 30), "png", (10, 20, 30)),
        ("L", 77, "png", (77, 77, 77)),
        ("LA", (77, 255), "png", (77, 77, 77)),
        ("LA", (77, 0), "png", (255, 255, 255)),
        ("RGBA", (10, 20, 30, 0), "png", (255, 255, 255)),
        ("RGBA", (200, 0, 0, 128), "png", (227, 127, 127)),  # half over white
        ("CMYK", (255, 0, 0, 0), "tiff", (0, 255, 255)),
        ("I;16", 65535, "png", (255, 255, 255)),
        ("I;16", 32768, "tiff", (128, 128, 128)),
        ("I;16B", 65535, "tiff", (255, 255, 255)),
        ("I", 100, "tiff", (100, 100, 100)),
        ("I", 65535, "tiff", (255, 255, 255)),
        ("I", 1_000_000, "tiff", (255, 255, 255)),
        ("F", 0.5, "tiff", (128, 128, 128)),
        ("F", 1000.0, "tiff", (255, 255, 255)),
        ("1", 1, "png", (255, 255, 255)),
        ("1", 0, "bmp", (0, 0, 0)),
    ],
)
def test_modes_load_as_rgb(tmp_path, mode, value, ext, expected):
    path = saved(Image.new(mode, (40, 36), value), tmp_path / f"x.{ext}")
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (40, 36)
    assert np.allclose(px(img), expected, atol=1)


def test_scaled_modes_keep_relative_values(tmp_path):
    a = np.zeros((40, 40), np.float32)
    a[:, 20:] = 8.0  # max 8 -> white, 4 -> mid grey, 0 -> black
    a[:20, :20] = 4.0
    img = load_image(Image.fromarray(a, mode="F"))
    assert px(img, (30, 0)) == (255,) * 3 and px(img, (0, 0)) == (128,) * 3 and px(img, (0, 30)) == (0,) * 3


@pytest.mark.parametrize("mode, top", [("I;16", 65535), ("I", 255), ("I", 4000), ("I", 100000), ("F", 1.0), ("F", 8.0)])
def test_scaled_modes_are_scaled_a_band_at_a_time_as_in_one_piece(monkeypatch, mode, top):
    """Bands of rows give exactly the whole array's v / full * 255, rounded (full: 65535, 255, the max...)."""
    from deconvviz import images

    rng = np.random.default_rng(0)
    a = rng.uniform(0, top, (45, 13)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
    img = Image.fromarray(a) if mode != "I;16" else Image.frombytes("I;16", (13, 45), a.tobytes())
    high = float(a.max())
    full = {"I;16": 65535.0, "F": 1.0 if high <= 1 else high}.get(mode)
    full = full or (255.0 if high <= 255 else 65535.0 if high <= 65535 else high)
    want = np.rint(np.clip(a.astype(np.float64) / full, 0, 1) * 255).astype(np.uint8)
    monkeypatch.setattr(images, "_BAND", 4)
    assert np.array_equal(np.asarray(images._scaled_to_8bit(img)), want)


def test_a_large_16_bit_grey_png_is_reduced_as_grey(tmp_path):
    a = (np.arange(600 * 400, dtype=np.uint32).reshape(400, 600) % 65536).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.frombytes("I;16", (600, 400), a.tobytes()).save(path)
    reduced = load_image(path, fit=32)  # 400 // 128 = 3
    whole = np.asarray(load_image(path).reduce(3))  # scaled to 8 bit, then to RGB, then reduced
    assert reduced.mode == "RGB" and reduced.size == (200, 134) and np.array_equal(np.asarray(reduced), whole)


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (40, 40), 1)
    p.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    p.putpixel((0, 0), 0)
    assert px(load_image(saved(p, tmp_path / "p.png"))) == (0, 0, 0)
    assert px(load_image(saved(p, tmp_path / "p.png")), (5, 5)) == (250, 10, 10)
    img = load_image(saved(p, tmp_path / "pt.png", transparency=0))
    assert px(img) == (255, 255, 255) and px(img, (5, 5)) == (250, 10, 10)


def test_cmyk_with_unusable_profile_falls_back_to_plain_conversion():
    img = Image.new("CMYK", (40, 40), (255, 0, 0, 0))
    img.info["icc_profile"] = b"not a profile"
    assert px(load_image(img)) == (0, 255, 255)


def test_pil_image_is_not_modified():
    src = Image.new("RGBA", (40, 40), (1, 2, 3, 0))
    assert px(load_image(src)) == (255, 255, 255) and src.mode == "RGBA" and px(src) == (1, 2, 3, 0)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 40), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red in the top-left corner of the stored pixels
    exif = img.getexif()
    exif[0x0112] = 6  # stored rotated: display rotated 90 degrees clockwise
    out = load_image(saved(img, tmp_path / "r.jpg", exif=exif, quality=95))
    assert out.size == (40, 60)
    assert np.allclose(px(out, (35, 4)), (255, 0, 0), atol=40)  # now top-right
    assert np.allclose(px(out, (4, 4)), (0, 0, 0), atol=40)


def test_missing_directory_corrupt_and_small_files(tmp_path):
    with pytest.raises(ImageError, match="image not found: '.*nope.png'; check the path"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match=r"cannot read image '.*bad.jpg': .*; expected a JPEG, PNG"):
        load_image(bad)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(saved(Image.new("RGB", (64, 64)), trunc).read_bytes()[:60])
    with pytest.raises(ImageError, match="trunc.png"):
        load_image(trunc)
    small = saved(Image.new("RGB", (20, 15)), tmp_path / "small.png")
    with pytest.raises(ImageError, match=f"'.*small.png' is 20x15 pixels; at least {MIN_SIZE}x{MIN_SIZE}"):
        load_image(small)
    with pytest.raises(ImageError):
        load_image(42)


def test_to_tensor():
    t = to_tensor(Image.new("RGB", (40, 33), (255, 0, 51)))
    assert t.shape == (3, 33, 40) and t.dtype == torch.float32
    assert torch.allclose(t[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))


def test_a_large_png_gives_the_batch_of_the_float_copy_it_no_longer_makes(tmp_path):
    """3000x2000: read reduced (a whole factor), then one float copy laid out as planes; the batch is exactly the
    one of the earlier code, which made the float copy pixels first and laid it out as planes after."""
    from deconvviz.images import _resize_crop

    path = tmp_path / "big.png"
    Image.open(DEFAULT_IMAGE).convert("RGB").resize((3000, 2000)).save(path, compress_level=1)
    x = to_batch(path, TORCHVISION, size=224)
    a = np.asarray(load_image(path, fit=224), dtype=np.float32) / 255.0
    assert a.shape == (2000 // 2, 3000 // 2, 3)  # 2000 // (4 * 224) = 2
    want = TORCHVISION.to_input(_resize_crop(torch.from_numpy(a).permute(2, 0, 1).contiguous(), 224)[None])
    assert torch.equal(x, want)


def test_to_batch_shape_dtype_and_single_or_many(tmp_path):
    path = saved(Image.new("RGB", (50, 40), (9, 9, 9)), tmp_path / "a.png")
    x = to_batch(path, TORCHVISION, size=64)
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    x = to_batch([path, Image.new("L", (100, 300))], CAFFE, size=48, dtype=torch.float64)
    assert x.shape == (2, 3, 48, 48) and x.dtype == torch.float64
    with pytest.raises(ImageError, match="no images"):
        to_batch([], TORCHVISION)


def test_to_batch_resizes_shorter_side_and_crops_centre():
    a = np.zeros((200, 400, 3), np.uint8)
    a[:, :100] = 255  # white left quarter, cut away by the centre crop
    a[:, 100:200] = (255, 0, 0)  # red second quarter: the left half of the crop
    x = to_batch(Image.fromarray(a), TORCHVISION, size=100)
    rgb = to_display(x[0], TORCHVISION)
    assert rgb.shape == (100, 100, 3)
    assert np.allclose(rgb[:, 5:45], (1, 0, 0), atol=0.02)
    assert np.allclose(rgb[:, 55:95], 0, atol=0.02)


def test_to_batch_size_none_needs_equal_sizes():
    x = to_batch([Image.new("RGB", (40, 50))] * 2, TORCHVISION, size=None)
    assert x.shape == (2, 3, 50, 40)
    with pytest.raises(ImageError, match="different sizes"):
        to_batch([Image.new("RGB", (40, 50)), Image.new("RGB", (50, 40))], TORCHVISION, size=None)


@pytest.mark.parametrize("pre", [TORCHVISION, CAFFE])
def test_to_display_inverts_to_batch(pre):
    a = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    x = to_batch(Image.fromarray(a), pre, size=None)
    assert not torch.allclose(x[0], to_tensor(Image.fromarray(a)))
    shown = to_display(x, pre)
    assert shown.shape == (48, 40, 3)
    assert np.abs(shown - a / 255.0).max() < 1e-5


@pytest.mark.parametrize("pre", [TORCHVISION, CAFFE])
def test_pattern_display_is_centred_and_symmetric(pre):
    r = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert np.allclose(to_display(torch.zeros(3, 32, 32), pre, pattern=True), 0.5)
    up, down = to_display(r, pre, pattern=True), to_display(-r, pre, pattern=True)
    assert np.allclose(up + down, 1.0, atol=1e-6)
    assert up.min() >= 0 and up.max() <= 1


def test_centred_uses_a_robust_scale():
    r = torch.linspace(-1, 1, 3 * 20 * 20).reshape(3, 20, 20)
    r[0, 0, 0] = -1000.0  # one extreme pixel does not set the scale
    s = torch.quantile(r.abs().flatten(), 0.995)
    assert torch.allclose(centred(r), (0.5 + r / (2 * s)).clamp(0, 1))
    assert centred(r)[0, 0, 0] == 0 and centred(r)[2, 19, 19] > 0.99
    assert torch.equal(centred(torch.zeros(2, 3, 4, 4)), torch.full((2, 3, 4, 4), 0.5))
    sparse = torch.zeros(3, 20, 20)
    sparse[1, 2, 3] = -2.0  # fewer nonzeros than the percentile sees: scale by the max instead
    assert centred(sparse)[1, 2, 3] == 0 and centred(sparse)[0, 0, 0] == 0.5


def test_default_image():
    img = load_image(DEFAULT_IMAGE)
    assert DEFAULT_IMAGE.is_file() and img.mode == "RGB" and img.size == (448, 448)
