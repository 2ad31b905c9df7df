"""The config schema and its checks: schema.py (every field once: default, rule, whether a
resume may change it, doc), checks.py (the rules' building blocks), validate.py (rules across
fields, devices, data and registries), diff.py (config changes on resume), cli_errors.py
(command-line mistakes as one line). docs/training.md, "Adding a config field"."""
