"""Every option of the commands, declared once as a typer `Annotated` alias, and the helpers that turn option
values into API arguments (`_channels`, `_box`, `_targets`, `_layer_names`, `_Choice`).

A flag that several commands share is one alias here; where a command gives a flag another meaning or default
(scan's --top counts images, not maps), its own alias sits in the second part, named after the command."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ..engine.boxes import Box, Point
from ..engine.reverse import UNPOOLS
from ..engine.rules import RULES
from ..engine.scores import PIXELS
from ..errors import DeconvvizError
from ._exits import _fail
from ._progress import Progress

MAX_SIZE = 2048  # --size above this needs more memory than a figure is worth; the Python API has no such limit
OUTPUTS = Path("runs")  # default outputs (figures, scans): git-ignored here, never over the README's figures/


class ModeChoice(StrEnum):
    max = "max"
    map = "map"


class StageView(StrEnum):
    channel = "channel"
    mean = "mean"


PixelsChoice = StrEnum("PixelsChoice", {name: name for name in PIXELS})


class TransformChoice(StrEnum):
    shift = "shift"
    scale = "scale"
    rotate = "rotate"


def _listed(intro: str, names, described: dict[str, str]) -> str:
    """Help for a choice from a registry: every name it holds, in its order, with the words below where any."""
    return intro + ", ".join(f"{n} ({described[n]})" if n in described else n for n in names) + "."


# --rule and --unpool offer what the registries hold (rules.RULES, reverse.UNPOOLS): a new rule or unpooling is a
# choice here without an edit; these words only describe the built-in ones in --help.
RuleChoice = StrEnum("RuleChoice", {name: name for name in RULES})
UnpoolChoice = StrEnum("UnpoolChoice", {name: name for name in UNPOOLS})

# -- The flags several commands share ---------------------------------------------------------------------------

Image = Annotated[Path | None, typer.Argument(help="Image file (any format PIL reads). Default: the built-in bicycle.")]
Model = Annotated[
    str | None,
    typer.Option(
        help="Network: vgg11 ... vgg19_bn, torchvision:NAME (or a bare torchvision name such as resnet50), "
        "timm:NAME, package.module:factory or path/to/file.py:factory (returns an nn.Module), or a Hugging Face "
        "model: hf:ORG/NAME, hf:PATH (a save_pretrained folder) or hf:TYPE with --weights random, config "
        "overrides as hf:vit:image_size=32,num_hidden_layers=2. Default: the architecture the --weights card names, "
        "else vgg16."
    ),
]
LayerOpt = Annotated[
    str | None,
    typer.Option(
        help="Layer: on a VGG conv1_1 ... conv5_3 (conv5_2 on vgg11/13, conv5_4 on vgg19), pool1 ... pool5, "
        "fc6 ... fc8 (need a classifier); on any network a module path such as features.28, layer3 or layer3.1.relu; "
        "`deconvviz layers` lists them. Default: the last convolutional block (conv5_3 on vgg16, layer4 on a ResNet)."
    ),
]
WeightsOpt = Annotated[
    str,
    typer.Option(
        "--weights",
        help="auto (cached torchvision file, else offline vgg16-caffe, else download; a factory's own weights), "
        "torchvision, vgg16-caffe, random, a model card's name (`deconvviz models`, $DECONVVIZ_MODELS) or .toml "
        "path (names its architecture: --model may be left out), or a .pt/.pth state dict.",
    ),
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Size = Annotated[
    int,
    typer.Option(help=f"Input side in pixels, {32} to {MAX_SIZE}: shorter side resized to it, centre square cropped."),
]
Dpi = Annotated[int, typer.Option(help="Resolution of raster figures (png, jpg), 1 to 1200.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
Top = Annotated[
    int, typer.Option(help="How many feature maps: those with the strongest activations, each beside its image patch.")
]
Channels = Annotated[str | None, typer.Option(help="Feature maps to show instead of the --top strongest, e.g. 12,40.")]
UnitChannel = Annotated[
    int | None, typer.Option(help="Feature map whose strongest activation is the unit. Default: the strongest.")
]
Seed = Annotated[int, typer.Option(help="Seed of the re-initialized weights.")]
Mode = Annotated[
    ModeChoice, typer.Option(help="max: each map's strongest activation only (Zeiler-Fergus); map: the whole map.")
]
RuleOpt = Annotated[
    RuleChoice,
    typer.Option(
        "--rule",
        help=_listed(
            "How ReLUs pass the signal back: ",
            RULES,
            {
                "deconvnet": "Zeiler-Fergus: rectify it",
                "guided": "guided backprop: rectify and keep it where the forward ReLU was active",
                "gradient": "the unit's plain gradient",
                "linear": "pass it unchanged",
            },
        ),
    ),
]
UnpoolOpt = Annotated[
    UnpoolChoice,
    typer.Option(
        "--unpool",
        help=_listed(
            "How max-pools are undone: ",
            UNPOOLS,
            {
                "switches": "Zeiler-Fergus: where each maximum was",
                "nearest": "every position of the window",
                "bilinear": "the pooled map resized",
                "fixed": "one fixed position of each window, Mahendran & Vedaldi",
            },
        ),
    ),
]
RegionOpt = Annotated[
    str | None,
    typer.Option(
        "--region",
        help="Choose the maps, and in each the position, strongest where the receptive-field centres lie in this "
        "box of the preprocessed input: x0,y0,x1,y1 in pixels (0,0,224,224 is all of it), or fractions of the side "
        "with the prefix frac: (frac:0.5,0,1,1 is the right half; 0.5,0.0,1.0,1.0, every number with a point and "
        "in 0..1, is read as fractions too), or a name from the image's sidecar IMAGE.json (the built-in photo: "
        "bicycle, dog).",
    ),
]
AtOpt = Annotated[
    str | None,
    typer.Option(
        "--at", help="Like --region, at the one position nearest to the point x,y (pixels, or frac:x,y fractions)."
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Leave out the positions in this box (same forms as --region); repeatable."),
]
ClassOpt = Annotated[
    int | None,
    typer.Option(
        "--class",
        help="Choose the maps contributing most to this class's score (gradient times activation, summed over "
        "positions), e.g. 671 (mountain bike); needs class scores: a classifier (--weights torchvision), or a "
        "segmentation network's map of them, the class's logits summed over the pixels --pixels and --target-box "
        "choose.",
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        help="With --class: the part of the model's result that holds the class scores, a dict's key (aux) or a "
        "tuple's index (1). Default: the result itself when it is a tensor, its logits where it has them, 'out' of "
        "a dict (torchvision's segmentation models), the first of a tuple.",
    ),
]
PixelsOpt = Annotated[
    PixelsChoice,
    typer.Option(
        "--pixels",
        help="With --class on a map of class scores (N, K, H, W, a segmentation network): which output pixels the "
        "class's logits are summed over: all, or predicted (where the class wins).",
    ),
]
TargetBoxOpt = Annotated[
    str | None,
    typer.Option(
        "--target-box",
        help="With --class on a map of class scores: sum only the output pixels whose centres lie in this box of "
        "the input (same forms as --region); with --pixels predicted, both conditions.",
    ),
]
ActivationsOpt = Annotated[  # reconstruct
    bool,
    typer.Option(
        "--activations",
        help="On an encoder-decoder, with --class: the decoder's own stages forward (each unpooling, upsampling and "
        "transposed convolution: its channel contributing most to the class) beside the class's projection from "
        "--layer (default: the last decoder stage), as Noh et al.'s Fig. 4.",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="On a token layer (ViT, DeiT: prefix tokens, then the patch grid), project a prefix token's features "
        "alone: cls, dist (distilled DeiT), reg0... (registers) or its index. Default: the maps on the patch grid.",
    ),
]
SiteOut = Annotated[
    Path,
    typer.Option(help="Site folder: new, empty, or a site made before by deconvviz (it is replaced)."),
]


def _figure_out(name: str, *, tables: bool = False):
    """--out of a command that writes a figure and its .provenance.json (tables: and a .csv); name: the default's."""
    record = "NAME.EXT.provenance.json"
    beside = f"{record} (provenance and every number) and NAME.csv" if tables else record
    return Annotated[
        Path | None,
        typer.Option(help=f"Figure file (.png .pdf .svg .jpg); beside it {beside}. Default: {OUTPUTS / name}.png"),
    ]


VisualizeOut, ReconstructOut = _figure_out("visualize-LAYER"), _figure_out("reconstruct-LAYER")
OcclusionOut, CompareOut = _figure_out("occlusion-LAYER-cCHANNEL"), _figure_out("compare-LAYER")
SanityOut, AblateOut = _figure_out("sanity-LAYER", tables=True), _figure_out("ablate-LAYER", tables=True)
FiltersOut, InvarianceOut = _figure_out("filters-LAYER"), _figure_out("invariance-TRANSFORM")

# -- A command's own flags, and the shared flags where a command gives them another meaning or default ------------

GridLayers = Annotated[  # visualize
    str | None,
    typer.Option(help="Several layers in one figure, e.g. conv1_2,conv3_3,conv5_3 (instead of --layer)."),
]
ReconstructChannels = Annotated[
    str | None,
    typer.Option(
        help="Feature maps, e.g. 12,40 (projected together), 'all', or the strongest one (default; "
        "on the built-in photo: the one strongest on the bicycle outside the dog, --mode map)."
    ),
]
ReconstructMode = Annotated[
    ModeChoice | None,
    typer.Option(
        help="max: the map's strongest activation only (default); map: the whole map (default for the "
        "built-in photo with nothing chosen)."
    ),
]
StageViewOpt = Annotated[
    StageView,
    typer.Option(
        help="Intermediate stages: channel (the one most like the stage as a whole, Noh et al.) or mean "
        "(the channel mean)."
    ),
]
ShapeWeights = Annotated[  # layers
    str,
    typer.Option(
        "--weights",
        help="Which weights decide the layers: shapes do not depend on them, but vgg16-caffe and conv-only "
        "state dicts have no classifier (no fc6-fc8). Same choices as elsewhere.",
    ),
]
ShapeSize = Annotated[int, typer.Option(help="Input side in pixels (32 or more) the shapes are given for.")]
WatchedChannel = Annotated[  # occlusion
    int | None, typer.Option(help="Feature map to watch. Default: the strongest for this image.")
]
OcclusionClass = Annotated[
    int | None,
    typer.Option(
        "--class",
        help="Also map this class's probability: an ImageNet class index 0-999 (needs a classifier: "
        "--weights torchvision, or a state dict with one), or of a segmentation network's map of class scores, "
        "averaged over the pixels --pixels and --target-box choose. Here --class does not choose the watched map "
        "(as it does in visualize and reconstruct): --channel, --region or --at do.",
    ),
]
OccluderSize = Annotated[
    int | None, typer.Option(help="Side of the grey square in pixels. Default: 48 at --size 224, scaled with it.")
]
Stride = Annotated[int | None, typer.Option(help="Step between occluder positions. Default: a third of its side.")]
OcclusionBatch = Annotated[int, typer.Option(help="Occluded copies evaluated per forward pass.")]
CompareTop = Annotated[  # compare
    int,
    typer.Option(
        "--top",
        help="How many feature maps: those with the strongest activations. Fewer by default than visualize's 9, "
        "as each map takes a row here, one picture per rule.",
    ),
]
SanityRules = Annotated[str, typer.Option(help="Rules to test, comma-separated: deconvnet, guided, gradient.")]
AblateLayer = Annotated[
    str | None,
    typer.Option(help="Layer of the unit, as --layer elsewhere. Default: pool5 (Mahendran & Vedaldi's) on VGG."),
]
FiltersLayer = Annotated[
    str | None,
    typer.Option(
        help="The first conv layer (conv1_1 on a VGG; default: the first convolution, whatever its name); "
        "deeper layers see feature maps, not colours."
    ),
]
Transform = Annotated[  # invariance
    TransformChoice,
    typer.Option(help="shift: down by -60..60 px (at --size 224); scale: 0.6-1.6 times; rotate: 0-360 degrees."),
]
InvarianceLayers = Annotated[
    str | None,
    typer.Option(
        help="Layers whose feature vectors are compared. Default: conv1_2 (conv1_1 on vgg11 and vgg11_bn, "
        "which have no conv1_2), the last conv layer (conv5_3 on vgg16) and fc7 where the weights have a "
        "classifier."
    ),
]
Folder = Annotated[  # scan
    Path, typer.Argument(metavar="FOLDER", help="Folder of images, read recursively: jpg, jpeg, png, bmp, webp.")
]
ScanLayers = Annotated[
    str | None, typer.Option(help="Several layers, sharing one forward pass per batch, e.g. conv3_3,conv5_3.")
]
ScanChannels = Annotated[
    str | None,
    typer.Option(help="Feature maps to project and draw, e.g. 12,40, or all. Default: the 9 strongest."),
]
ScanTop = Annotated[int, typer.Option(help="Images kept per feature map: those where it responds most.")]
ScanOut = Annotated[
    Path | None,
    typer.Option(
        help="Run directory: report.json, LAYER/channel-C.png, LAYER/overview.png, LAYER/projections.pt and "
        f"checkpoints; new, empty or a scan's own (docs/outputs.md). Default: {OUTPUTS}/scan-LAYER"
    ),
]
ScanBatch = Annotated[int, typer.Option(help="Images per forward pass; resume with the same.")]
Workers = Annotated[int | None, typer.Option(help="Processes reading images. Default: min(4, CPU count).")]
CheckpointEvery = Annotated[int, typer.Option(help="Images between checkpoints (OUT/state.pt).")]
MaxMemory = Annotated[
    float,
    typer.Option(
        help="GiB the kept projections may take (feature maps x --top x 3 x --size squared x 4 bytes); a scan "
        "that needs more is refused before it runs."
    ),
]
RunFolder = Annotated[  # site
    Path, typer.Argument(metavar="RUN", help="The --out folder of a finished `deconvviz scan`.")
]
ExploreLayers = Annotated[
    str | None,
    typer.Option(
        help="Layers to explore, e.g. conv3_3,conv5_3 or layer2,layer3. Default: every conv layer of a VGG, "
        "the stage outputs (e.g. layer1-layer4) of other networks.",
    ),
]
ExploreTop = Annotated[int, typer.Option(help="Strongest feature maps shown per layer.")]
PerPosition = Annotated[
    int, typer.Option(help="Units kept per feature-map position (the strongest there), listed on a click.")
]

# -- From option values to API arguments ----------------------------------------------------------------------


def _check_size(size: int) -> None:
    from ..images import check_size

    check_size(size)
    if size > MAX_SIZE:
        raise DeconvvizError(f"input size {size} is too large; use --size {MAX_SIZE} or less (224 is VGG's own)")


def _layer_names(layer: str | None, layers: str | None) -> list[str] | None:
    """--layers a,b (duplicates dropped) or --layer; None: the model's default layer."""
    if layers is None:
        return None if layer is None else [layer]
    names = list(dict.fromkeys(s.strip() for s in layers.split(",") if s.strip()))
    if not names:
        raise DeconvvizError(f"--layers '{layers}' names no layer; give e.g. conv1_2,conv3_3,conv5_3")
    return names


class _Choice:
    """--model and --weights, resolved once: the architecture alone (meta device, for checks before any work)
    and then, on demand, the loaded Network that every function below is given."""

    def __init__(self, model: str | None, weights: str, device: str = "auto", seed: int = 0):
        from ..engine.model import ModelView
        from ..networks.network import architecture_of, skeleton_network

        arch, _ = architecture_of(model, weights)
        self.spec, self.weights, self.device, self.seed = arch.spec, weights, device, seed
        self.skeleton = skeleton_network(arch.spec, weights)
        self.view = ModelView.of(self.skeleton)  # the architecture resolved once, for every check below
        self.name = f"{arch.spec} with weights {weights}"  # what errors call it

    @property
    def default_layer(self) -> str:
        return self.view.default_layer()

    def load(self, quiet: bool, status: Progress):
        from ..networks.network import load_network

        status(f"loading {self.spec} weights ({self.weights})")
        return load_network(self.spec, self.weights, self.device, seed=self.seed, verbose=not quiet)


def _channels(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() in ("", "top", "strongest"):
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        _fail(f"--channels '{text}' is not a comma-separated list of integers (e.g. 12,40)", 2)


def _box(text: str | None, count: int, option: str):
    """'x0,y0,x1,y1' (or 'x,y') as a Box (or Point): whole numbers, or any number above 1, are pixels; the prefix
    'frac:' makes fractions of the side; so do numbers that all have a decimal point and lie in 0..1 (0.5,0.0,1.0,1.0),
    the CLI's shorthand. A single word is a region named in the image's sidecar."""
    if text is None:
        return None
    body = text.strip()
    fractions = body.lower().startswith("frac:")
    body = body[len("frac:") :] if fractions else body
    parts = [p.strip() for p in body.split(",")]
    if len(parts) == 1 and count == 4 and parts[0] and not fractions:
        return parts[0]  # a region named in the image's sidecar
    try:
        values = [float(p) if "." in p or "e" in p.lower() else int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        form = "x0,y0,x1,y1 (pixels, or frac:x0,y0,x1,y1) or a region name" if count == 4 else "x,y"
        _fail(f"{option} '{text}' is not {form}", 2)
    if not fractions and all(0 <= v <= 1 for v in values) and any(isinstance(v, float) for v in values):
        if not all(isinstance(v, float) for v in values):
            fix = f"write frac:{body} for fractions of the side, or whole pixels"
            _fail(f"{option} '{text}' mixes fractions and pixels; {fix}", 2)
        fractions = True
    kind = Box if count == 4 else Point
    return kind.fractions(*values) if fractions else kind.pixels(*values)


def _scoring(output: str | None, pixels, target_box: str | None) -> dict:
    """How --class is scored, as Request keywords, from --output, --pixels and --target-box."""
    key = int(output) if output is not None and output.strip().isdigit() else output
    return {"output": key, "pixels": pixels.value, "target_box": _box(target_box, 4, "--target-box")}


def _targets(region: str | None, at: str | None, exclude: list[str] | None) -> dict:
    """The selection keywords of figures.* from --region, --at and --exclude."""
    found = {"region": _box(region, 4, "--region"), "at": _box(at, 2, "--at")}
    return found | {"exclude": [_box(e, 4, "--exclude") for e in exclude or ()]}
