"""The trainer's absl flags, made from `Config`'s fields: one flag per field, with the field's
default and help (`training.config`), so that a setting is written once. Enum-like settings are
plain string flags that `config.validate` checks, so that a bad value gets the same one-line
error as any other mistake instead of absl's usage dump."""

import dataclasses
import typing

from absl import flags

from training.config import Config, ConfigError

_DEFINE_BY_TYPE = {
  str: flags.DEFINE_string,
  int: flags.DEFINE_integer,
  float: flags.DEFINE_float,
  bool: flags.DEFINE_bool,
}


def _is_int_tuple(field_type) -> bool:
  return typing.get_origin(field_type) is tuple


def define_config_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines `--NAME` for every field of `Config`."""
  for field in dataclasses.fields(Config):
    help_text = field.metadata["help"]
    if _is_int_tuple(field.type):  # e.g. --head_widths=128,64
      flags.DEFINE_list(
        field.name, [str(v) for v in field.default], help_text, flag_values=flag_values
      )
    else:
      _DEFINE_BY_TYPE[field.type](field.name, field.default, help_text, flag_values=flag_values)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Config:
  """The Config the parsed flags give; a list of integers that is not one is a ConfigError."""
  values = {}
  for field in dataclasses.fields(Config):
    value = flag_values[field.name].value
    if _is_int_tuple(field.type):
      try:
        value = tuple(int(item) for item in value)
      except ValueError:
        raise ConfigError(f"--{field.name}={','.join(value)}: expected integers") from None
    values[field.name] = value
  return Config(**values)
