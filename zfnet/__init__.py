"""zfnet: Zeiler & Fergus, 'Visualizing and Understanding Convolutional Networks' (ECCV 2014), end to end.

    import zfnet
    p = zfnet.pretrained()                                  # the embedded Fashion-MNIST model
    x = p.preprocess(images)                                # PIL images / uint8 arrays -> model input
    with zfnet.Deconvnet(p.model) as dn:                     # Sec. 2.1
        rec = dn.project(x, layer="conv5", channel=12)
    rf = zfnet.receptive_field(p.model, "conv3")
"""
__version__ = "0.1.0"

from . import models
from .checkpoints import open_model
from .errors import UsageError, ZfnetNote
from .methods.deconvnet import Deconvnet, Target, project, project_unit
from .methods.correspondence import CorrespondenceResult, correspondence
from .methods.invariance import InvarianceResult, invariance
from .methods.occlusion import OcclusionResult, occlusion
from .pretrained import pretrained
from .receptive_field import receptive_field

__all__ = [
           "CorrespondenceResult",
           "Deconvnet",
           "InvarianceResult",
           "Target",
           "UsageError",
           "ZfnetNote",
           "__version__",
           "correspondence",
           "invariance",
           "OcclusionResult",
           "models",
           "occlusion",
           "open_model",
           "pretrained",
           "project",
           "project_unit",
           "receptive_field",
]
