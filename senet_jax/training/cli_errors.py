"""Moved to senet_jax/config/cli_errors.py; this name stays for older imports (and main.py)."""
from senet_jax.config.cli_errors import flag_error_message  # noqa: F401
