"""zfnet: Zeiler & Fergus, 'Visualizing and Understanding Convolutional Networks' (ECCV 2014), end to end.

    import zfnet
    p = zfnet.pretrained()                                  # the embedded Fashion-MNIST model
    with zfnet.Deconvnet(p.model) as dn:                     # Sec. 2.1
        rec = dn.project(images, layer="conv5", channel=12)
    rf = zfnet.receptive_field(p.model, "conv3")
"""
__version__ = "0.1.0"

from . import models  # noqa: E402
from .deconvnet import Deconvnet, Target, project  # noqa: E402
from .errors import UsageError  # noqa: E402
from .pretrained import pretrained  # noqa: E402
from .receptive_field import receptive_field  # noqa: E402

__all__ = ["models", "Deconvnet", "Target", "project", "receptive_field", "pretrained", "UsageError",
           "__version__"]
