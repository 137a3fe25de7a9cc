"""MobileNet v1 (Howard et al., 2017) with width (alpha) and resolution multipliers.

Layer names are stable (`conv1`, `conv_dw_{i}`, `conv_pw_{i}`, each with `_bn` and
`_relu` companions, `predictions`) so pruning and lowering code can select layers by
name; the 1x1 pointwise convolutions `conv_pw_*` hold most weights and mult-adds.
"""
from core.errors import UserError
from core.keras_env import keras

# (pointwise output channels, depthwise stride) of the 13 depthwise-separable
# blocks, from Table 1 of the paper, before the width multiplier is applied.
_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
_STEM_CHANNELS = 32
# The stem and four blocks have stride 2: the feature map shrinks by 2**5 = 32.
_MIN_RESOLUTION = 32


def scaled_channels(channels: int, alpha: float) -> int:
    """Channels after the width multiplier: `channels * alpha` rounded to a multiple of 8.

    Multiples of 8 keep SIMD lanes full in the int8/float kernels; the paper's
    alphas (0.25, 0.5, 0.75, 1.0) already give multiples of 8, so they are
    unchanged. Rounding is to the nearest multiple, at least 8, and never more
    than 10% below the exact product (then one step of 8 is added back).
    """
    exact = channels * alpha
    rounded = max(8, int(exact + 4) // 8 * 8)
    if rounded < 0.9 * exact:
        rounded += 8
    return rounded


def mobilenet_v1(
    input_shape: tuple[int, int, int],
    num_classes: int,
    alpha: float = 1.0,
    depth_multiplier: int = 1,
    dropout: float = 1e-3,
    batch_norm_momentum: float = 0.9,
    explicit_padding: bool = False,
    name: str = "mobilenet_v1",
) -> keras.Model:
    """Build MobileNet v1 for `input_shape` = (height, width, channels) images.

    Convolutions use "same" padding, so a 224x224 input ends in a 7x7x1024 map as
    in the paper. The classifier is a Dense layer with softmax on the globally
    pooled features (the paper's "FC" row), which prunes and converts plainly.

    BatchNorm momentum defaults to 0.9, not Keras' 0.99: on small data sets (a few
    hundred steps) the moving variance otherwise still carries its initial 1.0,
    far above the true variance, and inference-mode accuracy collapses to chance.

    `explicit_padding` pads every stride-2 layer with one zero row and column on each
    side (ZeroPadding2D) and convolves with "valid" padding: the graph XNNPACK's own
    sparse inference accepts on ARM (a symmetric-padded 3x3 stride-2 stem, no "same"
    padding on stride-2 layers, a MEAN at the end). Output sizes are those of "same".
    """
    _validate(input_shape, num_classes, alpha, depth_multiplier, dropout)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    stem_input, stem_padding = _stride2_input(inputs, "conv1", explicit_padding)
    x = keras.layers.Conv2D(
        scaled_channels(_STEM_CHANNELS, alpha), 3, strides=2, padding=stem_padding,
        use_bias=False, name="conv1",
    )(stem_input)
    x = keras.layers.BatchNormalization(momentum=batch_norm_momentum, name="conv1_bn")(x)
    x = keras.layers.ReLU(6.0, name="conv1_relu")(x)
    for i, (channels, stride) in enumerate(_BLOCKS, start=1):
        x = _separable_block(x, i, scaled_channels(channels, alpha), stride, depth_multiplier,
                             batch_norm_momentum, explicit_padding)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def _stride2_input(x, name: str, explicit: bool):
    """The input and padding mode of a stride-2 3x3 layer (see `explicit_padding`)."""
    if not explicit:
        return x, "same"
    return keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x), "valid"


def _separable_block(x, index: int, channels: int, stride: int, depth_multiplier: int,
                     momentum: float, explicit_padding: bool):
    """Depthwise 3x3 + BN + ReLU6, then pointwise 1x1 + BN + ReLU6 (paper, Fig. 3)."""
    padding = "same"
    if stride == 2:
        x, padding = _stride2_input(x, f"conv_dw_{index}", explicit_padding)
    x = keras.layers.DepthwiseConv2D(
        3, strides=stride, padding=padding, depth_multiplier=depth_multiplier,
        use_bias=False, name=f"conv_dw_{index}",
    )(x)
    x = keras.layers.BatchNormalization(momentum=momentum, name=f"conv_dw_{index}_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"conv_dw_{index}_relu")(x)
    x = keras.layers.Conv2D(channels, 1, use_bias=False, name=f"conv_pw_{index}")(x)
    x = keras.layers.BatchNormalization(momentum=momentum, name=f"conv_pw_{index}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"conv_pw_{index}_relu")(x)


def _validate(
    input_shape: tuple[int, int, int],
    num_classes: int,
    alpha: float,
    depth_multiplier: int,
    dropout: float,
) -> None:
    """Reject arguments that would build a broken or degenerate network."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape):
        raise UserError(
            f"mobilenet_v1: input_shape {shape} must be (height, width, channels) "
            "integers, e.g. (224, 224, 3) or (32, 32, 1) for grayscale."
        )
    height, width, channels = shape
    if height < _MIN_RESOLUTION or width < _MIN_RESOLUTION:
        raise UserError(
            f"mobilenet_v1: input resolution {height}x{width} is too small; use at least "
            f"{_MIN_RESOLUTION}x{_MIN_RESOLUTION}, because five stride-2 stages divide it "
            "by 32 (resize or pad the images)."
        )
    if channels < 1:
        raise UserError(f"mobilenet_v1: input channels {channels} must be at least 1.")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"mobilenet_v1: num_classes {num_classes!r} must be an integer >= 2.")
    if not isinstance(alpha, (int, float)) or not alpha > 0:
        raise UserError(
            f"mobilenet_v1: alpha {alpha!r} must be > 0 (the paper uses 0.25, 0.5, 0.75, 1.0)."
        )
    if not isinstance(depth_multiplier, int) or depth_multiplier < 1:
        raise UserError(
            f"mobilenet_v1: depth_multiplier {depth_multiplier!r} must be an integer >= 1."
        )
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise UserError(f"mobilenet_v1: dropout {dropout!r} must be in [0, 1).")
