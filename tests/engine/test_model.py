"""The model resolved once (engine.model.ModelView): whether it is a chain is asked once per model and the answer
handed down; the receptive fields found are kept in the view; a model changed after its Deconvnet was made is
projected as it is now."""

from __future__ import annotations

import ast
from pathlib import Path
from unittest import mock

import torch
import torchvision
from torch import nn

import deconvviz
from deconvviz import Box
from deconvviz.engine.deconvnet import crop_boxes
from deconvviz.engine.fields import _probe, receptive_field
from deconvviz.engine.forward import layer_shape
from deconvviz.engine.layers import chain_of
from deconvviz.engine.model import ModelView, view_of
from deconvviz.engine.table import layer_table
from deconvviz.engine.targets import check_choice

PACKAGE = Path(__file__).parents[2] / "deconvviz"


def chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU()
    ).eval()


class Residual(nn.Module):
    """Not a chain: a convolution and a residual block, local, so its fields can be probed."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return torch.relu(h + self.b(h))


def test_only_the_view_asks_whether_a_model_is_a_chain():
    """No module of the package but engine/model.py calls chain_of: everything below the view reads its steps."""
    callers = set()
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call):
                called = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                if called == "chain_of":
                    callers.add(file.relative_to(PACKAGE).as_posix())
    assert callers == {"engine/model.py"}


def test_a_projection_and_what_is_read_from_it_resolve_the_model_once():
    model, x = chain(), torch.randn(2, 3, 32, 28, generator=torch.Generator().manual_seed(1))
    with mock.patch("deconvviz.engine.model.chain_of", wraps=chain_of) as asked:
        dn = deconvviz.Deconvnet(model)
        out = dn.project(x, "4", top=2, region=Box.fractions(0.25, 0.25, 0.75, 0.75), keep_stages=True)
        crop_boxes(dn, out)
        dn.layers()
        layer_shape(dn.view, "4", size=32)
        layer_table(dn.view, (32, 32))
        check_choice(dn.view, "4", input_size=(32, 28), region=Box.fractions(0.0, 0.0, 0.5, 0.5))
        receptive_field(dn.view, "4", input_size=(32, 28))
    assert asked.call_count == 1
    assert view_of(dn.view) is dn.view  # a view handed on is used as it is
    assert deconvviz.Deconvnet(dn.view).view is dn.view  # and a Deconvnet made from it shares it


def test_the_view_keeps_the_receptive_fields_it_found():
    """Probing a network's fields costs more than a full-plane backward: the windows and the boxes probe once."""
    model, x = Residual().eval(), torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    dn = deconvviz.Deconvnet(model, crop=True)
    with mock.patch("deconvviz.engine.fields._probe", wraps=_probe) as probed:
        out = dn.project(x, "b", top=2)  # mode max with crop=True: on the crops of the fields
        dn.project(x, "b", top=3)
        boxes = dn.receptive_field_boxes(out)
    assert probed.call_count == 1
    fresh = receptive_field(model, "b", input_size=(24, 24), channels=3)  # a model given: a new view, probed anew
    assert torch.equal(boxes, fresh.boxes(out.selections.rows_cols.cpu()))


def test_a_model_changed_after_its_deconvnet_was_made_is_projected_as_it_is_now():
    """docs/python-api.md: "The model is read anew on every call". The view is kept while the model's structure
    (modules, their geometry, hooks) stays the same, and made again when it changes."""
    model, x = chain(), torch.randn(2, 3, 20, 18, generator=torch.Generator().manual_seed(3))
    dn = deconvviz.Deconvnet(model)
    before = dn.project(x, "4", top=2, mode="map")
    view = dn.view
    model[3].weight.data.mul_(2)  # weights are no structure: the same view, and the new weights are used
    assert dn.view is view
    assert torch.equal(
        dn.project(x, "4", top=2, mode="map").images,
        deconvviz.Deconvnet(model).project(x, "4", top=2, mode="map").images,
    )

    handle = model[0].register_forward_hook(lambda m, i, o: -o)  # a hook registered afterwards: autograd
    try:
        assert dn.steps is None
        hooked = dn.project(x, "4", top=2, mode="map")
        assert torch.equal(hooked.images, deconvviz.Deconvnet(model).project(x, "4", top=2, mode="map").images)
    finally:
        handle.remove()
    assert dn.steps is not None  # hook gone: the chain again

    model[1] = nn.GELU()  # a module replaced: no longer a chain of mirrored steps
    assert dn.steps is None and dn.view is not view
    after = dn.project(x, "4", top=2, mode="map")
    assert torch.equal(after.images, deconvviz.Deconvnet(model).project(x, "4", top=2, mode="map").images)
    assert not torch.allclose(after.images, before.images)

    dn.model = chain()[:3]  # another model altogether
    assert dn.layers() == ["0", "1", "2"]


def test_a_view_answers_what_the_raw_model_did():
    vgg = torchvision.models.vgg11()
    view = ModelView.of(vgg)
    assert view.is_chain and view.resolve("conv5_2") == view.aliases["conv5_2"] == "features.19"
    assert view.default_layer() == "conv5_2" and view.layer_names()[0] == "conv1_1"
    assert view.step_index("pool5") == [s.name for s in view.steps].index("features.20")
    other = ModelView.of(Residual())
    assert not other.is_chain and other.aliases == {} and other.stage_modules() == ["a", "b"]
