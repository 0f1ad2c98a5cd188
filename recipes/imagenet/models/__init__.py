"""The recipes' ImageNet models, built from `keras.layers` (every backend).

Their names, input sizes and options are listed in `recipes/imagenet/config.py`.
"""

from ..config import ALEXNET_FC_UNITS
from ..config import MODELS
from ..preprocessing import PREPROCESSING
from .alexnet import alexnet
from .alexnet import alexnet_bn
from .normalization import GhostBatchNormalization
from .normalization import ImageNormalization
from .resnet import resnet50

__all__ = [
    "GhostBatchNormalization",
    "ImageNormalization",
    "alexnet",
    "alexnet_bn",
    "build",
    "build_for",
    "resnet50",
]


def build(
    name,
    num_classes,
    image_size,
    *,
    dropout=0.5,
    zero_init_residual=True,
    alexnet_groups="split",
    alexnet_bn_variant="authors",
    alexnet_fc_units=ALEXNET_FC_UNITS,
    bn_span=None,
    preprocessing=None,
    conv_initializer="he_normal",
):
    """The named model, taking uint8 images that it normalises as
    `preprocessing` (a name in `preprocessing.PREPROCESSING`; None: the
    model's own source's) says, with batch statistics over `bn_span` images
    (None: the whole batch). Options that do not apply to it are ignored."""
    normalization = {}
    if preprocessing is not None:
        chosen = PREPROCESSING[preprocessing]
        normalization = dict(mean=chosen.mean, stddev=chosen.stddev)
    if name == "resnet50":
        return resnet50(
            num_classes,
            image_size,
            zero_init_residual=zero_init_residual,
            bn_span=bn_span,
            conv_initializer=conv_initializer,
            **normalization,
        )
    if name == "alexnet":
        return alexnet(
            num_classes,
            image_size,
            dropout=dropout,
            groups=alexnet_groups,
            fc_units=alexnet_fc_units,
            **normalization,
        )
    if name == "alexnet_bn":
        return alexnet_bn(
            num_classes,
            image_size,
            dropout=dropout,
            groups=alexnet_groups,
            variant=alexnet_bn_variant,
            bn_span=bn_span,
            fc_units=alexnet_fc_units,
            **normalization,
        )
    raise ValueError(f"`model` must be one of {MODELS}. Received: model={name!r}")


def build_for(config, num_classes, bn_span=None):
    """The model a `recipes.imagenet.config.TrainConfig` asks for, with batch
    statistics over `bn_span` images of the batch each layer sees (the
    runner's reading of `config.bn_span`)."""
    return build(
        config.model,
        num_classes,
        config.image_size,
        dropout=config.dropout,
        zero_init_residual=config.zero_init_residual,
        alexnet_groups=config.alexnet_groups,
        alexnet_bn_variant=config.alexnet_bn_variant,
        alexnet_fc_units=config.alexnet_fc_units,
        bn_span=bn_span,
        preprocessing=config.preprocessing,
        conv_initializer=config.conv_initializer,
    )
