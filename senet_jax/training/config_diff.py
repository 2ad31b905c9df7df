"""Moved to senet_jax/config/diff.py; this name stays for older imports."""
from senet_jax.config.diff import (HARMLESS, REMOVED, ConfigChangedError,  # noqa: F401
                                   check_resume_config, config_changes, is_harmless)
