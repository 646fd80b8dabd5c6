"""The public methods as records (issue 34): `zfnet.METHODS["occlusion"]` has the function, its settings class and
its result class. Everything that offers a method - the Python API, the CLI's flags, the explorer's requests, the
house tests - reads it from here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..receptive_field import ReceptiveField, ReceptiveFieldSettings, receptive_field
from ..registry import Registry
from ..settings import Settings
from .architecture import Architecture, ArchitectureSettings, architecture
from .atlas import AtlasSettings, Scan, atlas
from .correspondence import CorrespondenceResult, CorrespondenceSettings, correspondence
from .deconvnet import Projection, ProjectSettings, project
from .evidence import Evidence, EvidenceSettings, evidence
from .evolution import Evolution, EvolutionSettings, evolution
from .faithfulness import Faithfulness, FaithfulnessSettings, faithfulness
from .filters import FilterReport, FiltersSettings, filters
from .invariance import InvarianceResult, InvarianceSettings, invariance
from .occlusion import OcclusionResults, OcclusionSettings, occlusion
from .paint import PaintResult, PaintSettings, paint
from .visualize import Visualization, VisualizeSettings, visualize


@dataclass(frozen=True)
class Method:
    """One public method: `function(model, images, *, ..., settings=None, **settings_fields)` -> `result`."""

    name: str
    function: Callable[..., Any]
    settings: type[Settings]
    result: type
    paper: str  # the part of the paper it reproduces


METHODS: Registry[Method] = Registry("method")
for _m in (
    Method("architecture", architecture, ArchitectureSettings, Architecture, "Fig. 3"),
    Method("atlas", atlas, AtlasSettings, Scan, "Fig. 2"),
    Method("correspondence", correspondence, CorrespondenceSettings, CorrespondenceResult, "arXiv Sec. 4.3"),
    Method("evidence", evidence, EvidenceSettings, Evidence, "issue 36: sanity and causal checks of Sec. 2.1"),
    Method("evolution", evolution, EvolutionSettings, Evolution, "Fig. 4"),
    Method("faithfulness", faithfulness, FaithfulnessSettings, Faithfulness, "issue 36: RISE deletion/insertion"),
    Method("filters", filters, FiltersSettings, FilterReport, "Fig. 5, Sec. 4.1"),
    Method("invariance", invariance, InvarianceSettings, InvarianceResult, "arXiv Sec. 4.4"),
    Method("occlusion", occlusion, OcclusionSettings, OcclusionResults, "Sec. 4.2, Fig. 6"),
    Method("paint", paint, PaintSettings, PaintResult, "issue 38: paint to occlude, Fig. 6 live"),
    Method("project", project, ProjectSettings, Projection, "Sec. 2.1, Fig. 1"),
    Method("receptive_field", receptive_field, ReceptiveFieldSettings, ReceptiveField, "Sec. 2.1"),
    Method("visualize", visualize, VisualizeSettings, Visualization, "issue 37: feature visualization (Olah 2017)"),
):
    METHODS.register(_m.name, _m)
