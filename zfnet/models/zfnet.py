"""ZFNet exactly as Fig. 3 (Sec. 3): 224x224x3 input, 7x7 stride-2 first layer.

Sizes per layer: conv1 110x110 -> pool1 55x55 -> conv2 26x26 -> pool2 13x13 -> conv3..conv5 13x13 -> pool5 6x6
(6*6*256 = 9216 inputs to fc6). Rounding choices that give exactly these sizes (they fix where the pooling
switches fall): conv1 pads 1 pixel (the last padded column/row is never reached by a stride-2 window);
conv2 pads 0; conv3-5 pad 1; every 3x3 stride-2 max-pool rounds up (ceil mode, as in Caffe), which turns
110 into 55 and 26 into 13 while 13 -> 6 is exact.
"""

from .convnet import Arch, Conv

ZFNET = Arch(
    name="zfnet",
    in_channels=3,
    input_size=224,
    convs=(
        Conv(96, 7, stride=2, padding=1, pool=True, norm=True),  # 224 -> 110 -> pool 55, contrast norm
        Conv(256, 5, stride=2, padding=0, pool=True, norm=True),  # 55 -> 26 -> pool 13, contrast norm
        Conv(384, 3, padding=1),  # 13
        Conv(384, 3, padding=1),  # 13
        Conv(256, 3, padding=1, pool=True),  # 13 -> pool 6
    ),
    fcs=(4096, 4096),
)
