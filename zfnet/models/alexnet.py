"""Krizhevsky et al. (2012) exactly: the paper's replication baseline (Table 2, "Our replication of Krizhevsky
et al."), and the same net with dense connections (`ALEXNET_DENSE`, as Sec. 3 builds ZFNet's layers 3-5).

conv1 11x11 stride 4 (224 -> 55, padding 2), contrast normalization before pooling as in Krizhevsky et al.,
conv2 5x5 (padding 2, 27x27), pool 13x13, conv3-5 3x3 at 13x13, pool 6x6, fc6/fc7 4096. Krizhevsky's net ran on
two GPUs: conv2, conv4 and conv5 connect each half of their maps only to the half of the previous layer's maps
on the same GPU (groups = 2), conv3 and the fc layers to all of them.
"""

from dataclasses import replace

from .convnet import Arch, Conv

ALEXNET = Arch(
    name="alexnet",
    in_channels=3,
    input_size=224,
    convs=(
        Conv(96, 11, stride=4, padding=2, pool=True, norm=True),  # 224 -> 55 -> pool 27
        Conv(256, 5, padding=2, pool=True, norm=True, groups=2),  # 27 -> pool 13
        Conv(384, 3, padding=1),
        Conv(384, 3, padding=1, groups=2),
        Conv(256, 3, padding=1, pool=True, groups=2),  # 13 -> pool 6
    ),
    fcs=(4096, 4096),
    norm_before_pool=True,
)

ALEXNET_DENSE = ALEXNET.with_(
    name="alexnet-dense",
    convs=tuple(None if c is None else replace(c, groups=1) for c in ALEXNET.convs),
)
