"""Mixed precision: :func:`precision_policy` normalises the ``mixed_precision`` option into
a Keras dtype policy name (:data:`PRECISION_POLICIES`). Must not set the policy itself:
:mod:`covidxr.train` sets it for a run and restores it afterwards."""

from __future__ import annotations

__all__ = [
    "PRECISION_POLICIES",
    "precision_policy",
]

#: Keras dtype policies :func:`precision_policy` returns.
PRECISION_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")

_PRECISION_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "none": "float32",
    "off": "float32", "false": "float32", "no": "float32", "": "float32",
    "mixed_bfloat16": "mixed_bfloat16", "bfloat16": "mixed_bfloat16", "bf16": "mixed_bfloat16",
    "true": "mixed_bfloat16", "on": "mixed_bfloat16", "yes": "mixed_bfloat16",
    "mixed_float16": "mixed_float16", "float16": "mixed_float16", "fp16": "mixed_float16",
    "f16": "mixed_float16",
}


def precision_policy(value) -> str:
    """Normalise a ``mixed_precision`` option into a Keras dtype policy name.

    Args:
        value: ``None``/``False``/``"float32"``/``"fp32"``/``"none"`` (full precision),
            ``True``/``"mixed_bfloat16"``/``"bf16"``/``"bfloat16"``, or
            ``"mixed_float16"``/``"fp16"``/``"float16"``. Strings are case-insensitive.

    Returns:
        One of :data:`PRECISION_POLICIES`; pass it to ``keras.config.set_dtype_policy``
        before building the model. Mixed policies keep float32 variables and compute in
        16 bits; ``mixed_float16`` also makes ``compile`` wrap the optimizer in a loss-scale
        optimizer. The model's head is float32 either way (see ``build_model``).

    Raises:
        ValueError: Any other value.
    """
    if value is None or value is False:
        return "float32"
    if value is True:
        return "mixed_bfloat16"
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "_")
        if key in _PRECISION_ALIASES:
            return _PRECISION_ALIASES[key]
    raise ValueError(
        f"Unknown precision. Expected None, False, True or one of {list(PRECISION_POLICIES)} "
        f"(aliases 'fp32', 'bf16', 'fp16'). Received: mixed_precision={value!r}"
    )
