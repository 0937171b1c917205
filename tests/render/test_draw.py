"""Writing figures: all files of a set or none, never a half-written one."""

from __future__ import annotations

import pytest
import torch

from deconvviz.errors import DeconvvizError
from deconvviz.render.draw import write_files


def test_a_failing_file_leaves_none_of_the_set(tmp_path):
    (tmp_path / "old.png").write_bytes(b"old figure")

    def broken(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(DeconvvizError, match="cannot write '.*new.json': No space left on device"):
        write_files({tmp_path / "old.png": lambda f: f.write(b"new figure"), tmp_path / "new.json": broken})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png"]  # no temp files, nothing replaced
    assert (tmp_path / "old.png").read_bytes() == b"old figure"
    write_files({tmp_path / "old.png": lambda f: f.write(b"new figure"), tmp_path / "sub" / "new.json": lambda f: 0})
    assert (tmp_path / "old.png").read_bytes() == b"new figure" and (tmp_path / "sub" / "new.json").is_file()


def test_stage_channel_is_the_channel_most_like_the_stage_mean():
    import numpy as np

    from deconvviz.render.draw import stage_channel

    t = torch.zeros(4, 4, 5)
    t[0] = -10.0  # large, but negative: rectified away
    t[1, 0, 0] = 5.0  # the most energy (25), but one spot
    t[2, :3, :3] = 1.0  # two channels agree on a 3x3 block: the stage's pattern
    t[3, :3, :3] = 1.0
    # mean: 1.75 at (0, 0), 0.5 on the rest of the block, norm 2.25. cosine: channel 1 1.75 / 2.25 = 0.78;
    # channels 2 and 3 (1.75 + 8 * 0.5) / (3 * 2.25) = 0.85: the lower index wins the tie
    c, picture = stage_channel(t)
    assert c == 2 and picture.shape == (4, 5)
    assert np.allclose(picture, t[2].numpy())  # 0 to its 99.5th percentile (1)


def test_reconstruction_figure_letters_every_stage_and_names_the_last_in_its_note():
    """A deep network has more than 26 stages: panels go on as aa, ab, ...; the note names the last stage."""
    import numpy as np

    from deconvviz.engine.reverse import Stage
    from deconvviz.preprocess import IMAGENET_TORCHVISION
    from deconvviz.render.draw import reconstruction_figure

    g = torch.Generator().manual_seed(0)
    stages = [Stage(f"block{i}", "deconv", f"m{i}", torch.randn(4, 8, 8, generator=g)) for i in range(29)]
    stages.append(Stage("input", "deconv", "", torch.randn(3, 16, 16, generator=g)))
    fig = reconstruction_figure(np.zeros((16, 16, 3)), stages, IMAGENET_TORCHVISION, title="t")
    labels = [ax.get_xlabel().split(")")[0] + ")" for ax in fig.axes if ax.get_visible()]
    assert labels[:2] == ["(a)", "(b)"] and labels[26:28] == ["(aa)", "(ab)"] and len(labels) == 31
    assert any("stages (b)-(ad):" in t.get_text() for t in fig.texts)  # 29 stages: b..ad; (ae) reconstruction
