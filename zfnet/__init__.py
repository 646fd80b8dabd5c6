"""zfnet: Zeiler & Fergus, 'Visualizing and Understanding Convolutional Networks' (ECCV 2014), end to end.

Every method is `zfnet.<method>(model, images, *, ...)` on a batch of preprocessed images (N x C x H x W) and
returns a result dataclass of plain tensors whose `to_json()` is a JSON-ready dict:

    import zfnet
    p = zfnet.pretrained()                                      # the embedded Fashion-MNIST model
    x = p.preprocess(images)                                    # PIL images / uint8 arrays -> model input
    zfnet.project(p.model, x, layer="conv5", channel=12)        # Sec. 2.1 (Fig. 1)
    zfnet.atlas(p.model, x, layers=["conv1", "conv5"])          # Fig. 2's top-9 selection
    zfnet.occlusion(p.model, x, window=8, stride=2)             # Sec. 4.2 (Fig. 6), one result per image
    zfnet.occlusion(p.model, x, settings=zfnet.OcclusionSettings(window=8, stride=2))   # the same, as one value
    zfnet.receptive_field(p.model, x, layer="conv3")            # Sec. 2.1
    zfnet.show(zfnet.occlusion(p.model, x), x)                 # any result as the report's figure
    zfnet.report(p.model, "fashion-mnist-mini", out="rep")      # the whole paper as one page
"""

from . import models
from ._version import __version__
from .errors import UsageError, ZfnetNote
from .methods.architecture import Architecture, ArchitectureSettings, architecture
from .methods.atlas import AtlasSettings, Scan, atlas
from .methods.correspondence import CorrespondenceResult, CorrespondenceSettings, correspondence
from .methods.deconvnet import Deconvnet, Projection, ProjectSettings, Target, project
from .methods.evidence import Evidence, EvidenceSettings, evidence
from .methods.evolution import Evolution, EvolutionSettings, evolution
from .methods.faithfulness import Faithfulness, FaithfulnessSettings, faithfulness
from .methods.filters import FilterReport, FiltersSettings, filters
from .methods.invariance import InvarianceResult, InvarianceSettings, TransformCurve, invariance
from .methods.occlusion import OcclusionResult, OcclusionResults, OcclusionSettings, occlusion
from .methods.paint import PaintResult, PaintSettings, paint
from .methods.registry import METHODS as _METHODS
from .methods.registry import Method
from .methods.visualize import Visualization, VisualizeSettings, visualize
from .pretrained import pretrained
from .receptive_field import ReceptiveField, ReceptiveFieldSettings, receptive_field
from .settings import Run, Settings
from .weights import Opened, WeightsFile, open_model, opened_module


def __getattr__(name: str):
    """`zfnet.report` and `zfnet.show` load the report pipeline / matplotlib only when they are used."""
    if name == "report":
        from .pipelines.report import report

        return report
    if name == "open_index":  # issue 39 (pyarrow and duckdb: the `index` extra)
        from .pipelines.index import open_index

        return open_index
    if name == "show":
        from .render.show import show

        return show
    raise AttributeError(f"module 'zfnet' has no attribute {name!r}")


# the public methods as records: each takes (model, images, *, ..., settings=None, **fields) and returns a result
# with to_json() -> dict; METHODS[name] has .function, .settings (the settings class) and .result
METHODS = _METHODS

__all__ = [
    "METHODS",
    "Architecture",
    "ArchitectureSettings",
    "AtlasSettings",
    "CorrespondenceSettings",
    "EvidenceSettings",
    "EvolutionSettings",
    "FaithfulnessSettings",
    "FiltersSettings",
    "InvarianceSettings",
    "Method",
    "OcclusionSettings",
    "PaintResult",
    "PaintSettings",
    "ProjectSettings",
    "ReceptiveFieldSettings",
    "Run",
    "Settings",
    "Visualization",
    "VisualizeSettings",
    "CorrespondenceResult",
    "Deconvnet",
    "Evidence",
    "Evolution",
    "Faithfulness",
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
    "evidence",
    "evolution",
    "visualize",
    "faithfulness",
    "filters",
    "invariance",
    "models",
    "occlusion",
    "paint",
    "open_model",
    "opened_module",
    "pretrained",
    "project",
    "receptive_field",
    "report",
    "show",
]
