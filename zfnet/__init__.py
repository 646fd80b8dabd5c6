"""zfnet: Zeiler & Fergus, 'Visualizing and Understanding Convolutional Networks' (ECCV 2014), end to end.

    import zfnet
    p = zfnet.pretrained()                                  # the embedded Fashion-MNIST model
    with zfnet.Deconvnet(p.model) as dn:                     # Sec. 2.1
        rec = dn.project(images, layer="conv5", channel=12)
    rf = zfnet.receptive_field(p.model, "conv3")
"""
__version__ = "0.1.0"

from . import models
from .deconvnet import Deconvnet, Target, project
from .errors import UsageError
from .pretrained import pretrained
from .receptive_field import receptive_field

__all__ = [
           "Deconvnet",
           "Target",
           "UsageError",
           "__version__",
           "models",
           "pretrained",
           "project",
           "receptive_field",
]
