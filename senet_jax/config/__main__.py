"""`python -m senet_jax.config`: every config field, its default and its one-line doc (from
schema.py); '*' marks the fields a resumed run may change without allow_config_change."""
import ml_collections

from senet_jax.config import schema


def _shown(field) -> str:
  value = field.default_value()
  if isinstance(value, ml_collections.FieldReference):  # a placeholder (data_dir): its value
    value = value.get()
  return repr(value.to_dict() if hasattr(value, 'to_dict') else value)


def main() -> None:
  """Prints one line per field (a section's keys indented under it)."""
  for field in schema.SCHEMA:
    if field.fields:
      print(f'  {field.name}: {field.doc}')
      for key in field.fields:
        print(f'      .{key.name} = {_shown(key)}  # {key.doc}')
      continue
    print(f'{"*" if field.harmless else " "} {field.name} = {_shown(field)}  '
          f'# {field.doc}')


if __name__ == '__main__':
  main()
