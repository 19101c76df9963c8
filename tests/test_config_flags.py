"""Each setting is defined once, in its `Config` field: the trainer's flags are made from the
fields, with their defaults and help, and give back the Config they describe."""

import ast
import dataclasses
import glob
import os

import pytest
from absl import flags

from training.config import Config, ConfigError
from training.config_flags import config_from_flags, define_config_flags

pytestmark = pytest.mark.newest_jax  # also run on Python 3.13's jax (.ci/run)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def flag_values():
  values = flags.FlagValues()
  define_config_flags(values)
  return values


def test_every_field_is_a_flag_with_its_default_and_help(flag_values):
  for field in dataclasses.fields(Config):
    flag = flag_values[field.name]
    assert flag.help == field.metadata["help"] and flag.help.strip()
    default = (
      tuple(int(v) for v in flag.default) if isinstance(field.default, tuple) else flag.default
    )
    assert default == field.default, field.name
  assert set(flag_values) == {field.name for field in dataclasses.fields(Config)}


def test_parsed_flags_give_the_config_they_describe(flag_values):
  flag_values(
    ["prog", "--task=classify", "--head_widths=64,32", "--dropout=0.25", "--nocarry_state"]
  )
  config = config_from_flags(flag_values)
  assert config == dataclasses.replace(
    Config(), task="classify", head_widths=(64, 32), dropout=0.25, carry_state=False
  )
  flag_values(["prog", "--bucket_boundaries=8,x"])
  with pytest.raises(ConfigError, match=r"^--bucket_boundaries=8,x: expected integers$"):
    config_from_flags(flag_values)


def test_the_package_defines_few_flags_by_hand():
  """The trainer's settings come from Config; what is left are the tools' own flags and the
  trainer's workdir and multi-process flags."""
  calls = 0
  for path in glob.glob(os.path.join(ROOT, "training", "**", "*.py"), recursive=True):
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    calls += sum(
      isinstance(node, ast.Call)
      and isinstance(node.func, ast.Attribute)
      and node.func.attr.startswith("DEFINE_")
      for node in ast.walk(tree)
    )
  assert calls <= 35, calls
