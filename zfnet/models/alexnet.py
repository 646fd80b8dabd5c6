"""Krizhevsky et al. (2012) with dense connections in layers 3-5: the paper's replication baseline (Table 1, 2).

conv1 11x11 stride 4 (224 -> 55, padding 2), contrast normalization before pooling as in Krizhevsky et al.,
conv2 5x5 (padding 2, 27x27), pool 13x13, conv3-5 3x3 at 13x13, pool 6x6, fc6/fc7 4096.
"""

from .convnet import Arch, Conv

ALEXNET = Arch(
    name="alexnet",
    in_channels=3,
    input_size=224,
    convs=(
        Conv(96, 11, stride=4, padding=2, pool=True, norm=True),  # 224 -> 55 -> pool 27
        Conv(256, 5, padding=2, pool=True, norm=True),  # 27 -> pool 13
        Conv(384, 3, padding=1),
        Conv(384, 3, padding=1),
        Conv(256, 3, padding=1, pool=True),  # 13 -> pool 6
    ),
    fcs=(4096, 4096),
    norm_before_pool=True,
)
