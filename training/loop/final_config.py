"""A run's final configuration, resolved in one step before anything is built.

The flags are where a run starts; three things can change or refuse them, in this order:
- `--init_from` (and `--init_backward_from`): a classifier takes its language model's cell,
  sizes and tokenizer (`pretrained.ADOPTED_FIELDS`), and both language models must agree;
- `--train_data=prepared:DIR`: the prepared dataset fixes the tokenizer and vocabulary size;
- a resumed run's record (`run_config.json`): the model and the data layout must not change, and
  the new topology must divide the global batch.
`resolve_config` applies them and the flags' own validation, and returns the config the whole run
uses; every refusal is a `ConfigError` or `DataError` whose message names the flag. It reads the
workdir and the runs it names, and writes nothing.
"""

import dataclasses
import os

from absl import logging

from pipeline.paths import absolute
from pipeline.prepared import VOCAB_FILE
from pipeline.tokenizers import Vocabulary
from training.bookkeeping.run_config import check_devices_for_resume, check_resume
from training.bookkeeping.trained_run import load_config
from training.bookkeeping.workdir import check_writable
from training.config import Config, ConfigError, validate
from training.loop.data import is_prepared, open_prepared
from training.loop.pretrained import ADOPTED_FIELDS, ENCODER_FIELDS


def resolve_config(config: Config, workdir: str, devices: int) -> tuple[Config, str]:
  """(the run's final config, its absolute workdir) for a job of `devices` devices."""
  # Relative paths (workdir, data, TFDS dir) are resolved once, here: Orbax needs absolute ones.
  workdir, config = absolute(workdir), config.with_absolute_paths()
  if config.init_from:
    config = adopt_language_models(config)  # the language model's cell, sizes and tokenizer
  config = adopt_prepared_tokenizer(config)  # a prepared training set fixes the tokenizer
  # Before validate's check: it says what changed
  check_devices_for_resume(config, workdir, devices)
  validate(config, devices)
  check_resume(config, workdir)
  check_writable(workdir)
  return config, workdir


def adopt_language_models(config: Config) -> Config:
  """`config` with the language model's architecture (the flags for it are overridden), and
  with `backward_embedding` when a backward language model starts the backward stack."""
  lm = _language_model(config.init_from, "init_from", read_backward=config.read_backward)
  adopted = {name: getattr(lm, name) for name in ADOPTED_FIELDS}
  if config.init_backward_from:
    backward = _language_model(config.init_backward_from, "init_backward_from", read_backward=True)
    differing = [
      f"--{name}={getattr(backward, name)} (--init_from's: {getattr(lm, name)})"
      for name in ENCODER_FIELDS
      if getattr(backward, name) != getattr(lm, name)
    ]
    if differing:
      raise ConfigError(
        f"--init_backward_from={config.init_backward_from}: its encoder differs from the"
        f" --init_from language model's: {', '.join(differing)}"
      )
    vocabularies = [
      Vocabulary.load(os.path.join(workdir, VOCAB_FILE))
      for workdir in (config.init_from, config.init_backward_from)
    ]
    if vocabularies[0] != vocabularies[1]:
      raise ConfigError(
        f"--init_backward_from={config.init_backward_from}: its vocabulary differs from the"
        f" --init_from language model's; train both on the same --train_data, --tokenizer and"
        " --vocab_size"
      )
    adopted["backward_embedding"] = True
  changed = {name: value for name, value in adopted.items() if getattr(config, name) != value}
  if changed:
    logging.info("From --init_from: %s", "  ".join(f"--{k}={v}" for k, v in changed.items()))
  return dataclasses.replace(config, **adopted)


def _language_model(workdir: str, flag: str, read_backward: bool) -> Config:
  """The config of the language model's run in `workdir`, which must read in that direction."""
  lm = load_config(workdir)
  if lm.task != "lm":
    raise ConfigError(
      f"--{flag}={workdir}: that run trained --task={lm.task}; a classifier starts from a"
      " language model's run (--task=lm)"
    )
  if lm.read_backward != read_backward:
    if flag == "init_from":
      raise ConfigError(
        f"--init_from={workdir}: that language model reads its text "
        + (
          "backwards (--read_backward); a classifier starts from it with --read_backward too,"
          " or, --bidirectional, as --init_backward_from"
          if lm.read_backward
          else "forwards; a classifier with --read_backward starts from one trained with --read_backward"
        )
      )
    raise ConfigError(
      f"--{flag}={workdir}: that language model reads its text forwards; --init_backward_from"
      " takes one trained with --read_backward"
    )
  return lm


def adopt_prepared_tokenizer(config: Config) -> Config:
  """With `--train_data=prepared:DIR`, the dataset fixes the tokenizer and vocabulary size (the
  flags for them are overridden, as `--init_from` does with a language model's)."""
  train_spec = config.train_data  # (the embedded default is never a prepared dataset)
  if not is_prepared(train_spec) or config.init_from:
    return config
  dataset, _ = open_prepared(train_spec, "train_data")
  adopted = {"tokenizer": dataset.tokenizer, "vocab_size": int(dataset.meta["vocab_size"])}
  changed = {name: value for name, value in adopted.items() if getattr(config, name) != value}
  if changed:
    logging.info("From --train_data: %s", "  ".join(f"--{k}={v}" for k, v in changed.items()))
  return dataclasses.replace(config, **adopted)
