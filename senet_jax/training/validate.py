"""Moved to senet_jax/config/validate.py; this name stays for older imports (and main.py)."""
from senet_jax.config.validate import (MIN_RESOLUTION, ConfigError, check_against_data,  # noqa
                                       check_data, check_model_kwargs, check_sections,
                                       training_length, validate_config, validate_fields,
                                       validate_mesh, validate_model_input)
