"""zfnet: Zeiler & Fergus, 'Visualizing and Understanding Convolutional Networks' (ECCV 2014), end to end.

Every method is `zfnet.<method>(model, images, *, ...)` on a batch of preprocessed images (N x C x H x W) and
returns a result dataclass of plain tensors whose `to_json()` is a JSON-ready dict:

    import zfnet
    p = zfnet.pretrained()                                      # the embedded Fashion-MNIST model
    x = p.preprocess(images)                                    # PIL images / uint8 arrays -> model input
    zfnet.project(p.model, x, layer="conv5", channel=12)        # Sec. 2.1 (Fig. 1)
    zfnet.atlas(p.model, x, layers=["conv1", "conv5"])          # Fig. 2's top-9 selection
    zfnet.occlusion(p.model, x, window=8, stride=2)             # Sec. 4.2 (Fig. 6), one result per image
    zfnet.receptive_field(p.model, x, layer="conv3")            # Sec. 2.1
    zfnet.show(zfnet.occlusion(p.model, x), x)                 # any result as the report's figure
    zfnet.report(p.model, "fashion-mnist-mini", out="rep")      # the whole paper as one page
"""

from . import models
from ._version import __version__
from .errors import UsageError, ZfnetNote
from .methods.architecture import Architecture, architecture
from .methods.atlas import Scan, atlas
from .methods.correspondence import CorrespondenceResult, correspondence
from .methods.deconvnet import Deconvnet, Projection, Target, project
from .methods.evolution import Evolution, evolution
from .methods.filters import FilterReport, filters
from .methods.invariance import InvarianceResult, TransformCurve, invariance
from .methods.occlusion import OcclusionResult, OcclusionResults, occlusion
from .pretrained import pretrained
from .receptive_field import ReceptiveField, receptive_field
from .weights import Opened, WeightsFile, open_model, opened_module


def __getattr__(name: str):
    """`zfnet.report` and `zfnet.show` load the report pipeline / matplotlib only when they are used."""
    if name == "report":
        from .pipelines.report import report

        return report
    if name == "show":
        from .render.show import show

        return show
    raise AttributeError(f"module 'zfnet' has no attribute {name!r}")


# the public methods: each takes (model, images, *, ...) and returns a result with to_json() -> dict
METHODS = (
    "architecture",
    "atlas",
    "correspondence",
    "evolution",
    "filters",
    "invariance",
    "occlusion",
    "project",
    "receptive_field",
)

__all__ = [
    "METHODS",
    "Architecture",
    "CorrespondenceResult",
    "Deconvnet",
    "Evolution",
    "FilterReport",
    "InvarianceResult",
    "OcclusionResult",
    "OcclusionResults",
    "Opened",
    "Projection",
    "ReceptiveField",
    "Scan",
    "Target",
    "TransformCurve",
    "UsageError",
    "WeightsFile",
    "ZfnetNote",
    "__version__",
    "architecture",
    "atlas",
    "correspondence",
    "evolution",
    "filters",
    "invariance",
    "models",
    "occlusion",
    "open_model",
    "opened_module",
    "pretrained",
    "project",
    "receptive_field",
    "report",
    "show",
]
