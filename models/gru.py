"""Stacked GRU sequence classifiers, for float feature sequences or token ids.

Layers are named `embedding`, `gru_{i}` (1-based), `dropout` and `head`, so the
pruning and custom-op lowering code can find the recurrent layers by name.
"""
from collections.abc import Sequence

from core.errors import UserError
from core.keras_env import keras


def gru_classifier(
    input_shape: tuple[int, ...],
    num_classes: int,
    units: Sequence[int] = (64,),
    vocab_size: int | None = None,
    embedding_dim: int = 32,
    reset_after: bool = True,
    dropout: float = 0.0,
    name: str = "gru_classifier",
) -> keras.Model:
    """Build GRU layers over `input_shape` and a softmax head on the last state.

    With `vocab_size`, the input is (T,) int32 token ids fed through an Embedding;
    otherwise it is (T, F) float32 features. The GRUs keep the default tanh/sigmoid
    activations and unroll=False, which the TFLite converter lowers to its fused
    or while-loop form. `dropout` is a Dropout layer before the head (only active
    in training), not the GRU's own input dropout.
    """
    units = _validate(input_shape, num_classes, units, vocab_size, embedding_dim, dropout)
    if vocab_size is not None:
        inputs = keras.Input(shape=tuple(input_shape), dtype="int32", name="tokens")
        x = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")(inputs)
    else:
        inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="features")
        x = inputs
    for i, width in enumerate(units, start=1):
        x = keras.layers.GRU(
            width,
            return_sequences=i < len(units),
            reset_after=reset_after,
            name=f"gru_{i}",
        )(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name=name)


def _validate(
    input_shape: tuple[int, ...],
    num_classes: int,
    units: Sequence[int],
    vocab_size: int | None,
    embedding_dim: int,
    dropout: float,
) -> tuple[int, ...]:
    """Reject bad arguments with a message that says what to change; return units."""
    shape = tuple(input_shape)
    expected = "(T,) token ids" if vocab_size is not None else "(T, F) features"
    if len(shape) != (1 if vocab_size is not None else 2) or not all(
        isinstance(d, int) and d >= 1 for d in shape
    ):
        hint = (
            "drop vocab_size for float features"
            if vocab_size is not None
            else "set vocab_size for token ids"
        )
        raise UserError(
            f"gru_classifier: input_shape {shape} must be {expected} with positive "
            f"integer sizes ({hint})."
        )
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"gru_classifier: num_classes {num_classes!r} must be an integer >= 2.")
    if isinstance(units, int):
        units = (units,)
    units = tuple(units)
    if not units or not all(isinstance(u, int) and u >= 1 for u in units):
        raise UserError(
            f"gru_classifier: units {units!r} must be a non-empty list of positive "
            "integers, one per GRU layer, e.g. [64] or [128, 64]."
        )
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < 2):
        raise UserError(f"gru_classifier: vocab_size {vocab_size!r} must be an integer >= 2.")
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise UserError(
            f"gru_classifier: embedding_dim {embedding_dim!r} must be an integer >= 1."
        )
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise UserError(f"gru_classifier: dropout {dropout!r} must be in [0, 1).")
    return units
