"""A narrow slice of DC's ConvNet space, used by the examples' ``--quick`` mode.

Depth 1-3, width 16 or 32, every activation, normalisation and pooling of ``convnet``: 270 small
architectures that train in well under a second on 8x8 digits. It is also an example of a space
file: any ``--space path/to/space.py`` (or ``get_space("path/to/space.py")``) that defines ``space``.
"""

from search_spaces.convnet import ConvNetSpace


class SmallConvNetSpace(ConvNetSpace):
    name = "convnet-small"
    choices = {**ConvNetSpace.choices, "depth": [1, 2, 3], "width": [16, 32]}

    def default_arch(self) -> dict:
        return {"depth": 2, "width": 32, "act": "relu", "norm": "instancenorm", "pool": "avgpool"}


space = SmallConvNetSpace()
