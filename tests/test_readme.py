"""The README's Python example runs as written."""

import re
from pathlib import Path

import torch


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    code = next(b for b in blocks if "Deconvnet(model)" in b)  # the Python API's first example
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    out = scope["out"]
    assert out.images.shape == (1, 2, 3, 224, 224) and len(out.stages) == 9
    assert scope["picture"].shape == (224, 224, 3) and 0 <= scope["picture"].min() <= scope["picture"].max() <= 1
    assert torch.equal(out.selections.channels, torch.tensor([[3, 17]]))


def test_readme_region_example_runs_and_picks_the_bicycle_map(tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "named_regions" in b)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["bike"].selections.channels.tolist() == [[348]]  # as the README's table says
    cols = scope["right"].selections.rows_cols[0, :, 1]
    assert bool((cols * 16 + 8 >= 112).all())  # field centres in the right half
