"""Moved: the fields and their rules are senet_jax/config/schema.py (checkers: config/checks.py).
This name stays for older imports."""
from senet_jax.config.checks import (FRACTION, NON_NEG, POSITIVE_INT, Checker,  # noqa: F401
                                     boolean, choice, crop_fraction, crop_range, integer,
                                     mapping, mesh_axis, number, numbers_of, optional_text,
                                     regex, step_range, text)
from senet_jax.config.schema import FIELDS, RESIZE_METHODS, check_fields  # noqa: F401
from senet_jax.utils.names import suggest  # noqa: F401
