"""Wires the pipeline to a run: reads the data, fixes the vocabulary, makes the datasets.

Every split is read as a prepared dataset (`pipeline.prepared`): only its index at start-up,
and its records batch by batch, each process those of its own rows. A split given as any other
source (`text:`, `jsonl:`, ..., the generated default) is prepared into `WORKDIR/data/` on first
use, by process 0, and read the same way; `python -m pipeline.prepare` does it ahead of time for
corpora that should be prepared once for many runs (or on a machine of their own).

The run's vocabulary (and class names) are the training split's, saved in the workdir on the
first run; a resumed run keeps them, so token ids never shift under a checkpoint. Dev and test
splits are read in the run's vocabulary and labels.
"""

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from pipeline import batch_plans, paths, sources
from pipeline.errors import DataError
from pipeline.labels import Labels

# A workdir keeps its vocabulary and labels under the same names as a prepared dataset, so either
# can be given to `pipeline.prepare --vocab_from`.
from pipeline.prepared import LABELS_FILE, META_FILE, VOCAB_FILE, PreparedDataset
from pipeline.prepared_writer import prepare_corpus
from pipeline.sequence_batches import make_plan_function, sequence_batches
from pipeline.token_windows import window_batches
from pipeline.tokenizers import SUBWORD_KINDS, Vocabulary
from training.config import Config, ConfigError, source_read_options
from training.loop.class_balance import class_counts, imbalance_warning


@dataclasses.dataclass
class RunData:
  vocab: Vocabulary
  num_classes: int  # 0 for per-token training
  train_batches: Callable[
    [int], Iterator[dict]
  ]  # start (global batch index) -> this process's batches
  # One pass over this process's share of the dev split
  eval_batches: Callable[[], Iterator[dict]] | None
  eval_spec: str
  truncated_examples: int = 0  # training sequences cut to the row width (classify)
  test_batches: Callable[[], Iterator[dict]] | None = None  # the test split, read once at the end
  class_names: tuple[str, ...] | None = None  # a classifier's classes, in class id order


@dataclasses.dataclass
class _Split:
  """One split, however it was read: per-token data as a token stream, per-sequence data as
  random-access sequences and their labels (in memory, or a prepared dataset's records)."""

  stream: object = None
  sequences: object = None
  labels: np.ndarray | None = None


def prepare_data(config: Config, workdir: str) -> RunData:
  process_index, process_count = jax.process_index(), jax.process_count()
  _require_vocabulary_of_checkpoints(workdir)
  train_spec, eval_spec = config.data_specs()
  holdout = eval_spec if eval_spec.startswith(sources.HOLDOUT) else ""
  train_spec = _prepared_spec(train_spec, "train_data", config, workdir, holdout=holdout)
  train, holdout_split, vocab, labels = _training_split(config, workdir, train_spec, eval_spec)
  held_out = {
    flag: _held_out_split(_prepared_spec(spec, flag, config, workdir), flag, config, vocab, labels)
    for flag, spec in (("eval_data", "" if holdout else eval_spec), ("test_data", config.test_data))
  }
  held_out["eval_data"] = held_out["eval_data"] or holdout_split

  if config.task == "lm":
    lm_args = dict(
      batch_size=config.batch_size,
      seq_len=config.seq_len,
      carry_state=config.carry_state,
      shard_index=process_index,
      shard_count=process_count,
      num_threads=config.data_workers,
      reverse=config.read_backward,
    )
    train_batches = lambda start=0: iter(
      window_batches(train.stream, train=True, what="--train_data", start=start, **lm_args)
    )

    def lm_batches(split, flag):
      if split is None:
        return None
      batches = lambda: iter(window_batches(split.stream, train=False, what=f"--{flag}", **lm_args))
      batches()  # Fail now, not at the first evaluation, if the stream cannot fill the lanes.
      return batches

    return RunData(
      vocab,
      0,
      train_batches,
      lm_batches(held_out["eval_data"], "eval_data"),
      eval_spec,
      test_batches=lm_batches(held_out["test_data"], "test_data"),
    )

  class_names = labels.names or tuple(str(i) for i in range(labels.num_classes))
  if jax.process_index() == 0:
    _warn_of_imbalance(train, held_out, labels.num_classes, class_names)
  if len(train.sequences) < config.batch_size:
    raise DataError(
      f"--train_data={train_spec}: {len(train.sequences)} examples cannot fill one"
      f" batch of --batch_size={config.batch_size}"
    )
  train_lengths = train.sequences.lengths
  boundaries, width = [], config.seq_len  # only bucketing has boundaries
  if config.batching == "bucket":
    boundaries = list(config.bucket_boundaries) or batch_plans.optimal_boundaries(
      train_lengths, batch_plans.MAX_BUCKETS, config.seq_len
    )
    width = boundaries[-1]
  truncated = int((train_lengths > width).sum())
  if truncated:
    logging.warning(
      "%d of %d training sequences are longer than %d tokens and are truncated to it",
      truncated,
      len(train_lengths),
      width,
    )

  def batches(split: _Split | None, train: bool):
    if split is None:
      return None
    plan_for_epoch, segments = make_plan_function(
      split.sequences.lengths,
      batching=config.batching,
      batch_size=config.batch_size,
      seq_len=config.seq_len,
      seed=config.seed,
      shuffle=train,
      boundaries=boundaries,
      batch_tokens=config.batch_tokens,
      max_segments=config.max_segments,
      row_multiple=jax.device_count(),
    )
    return lambda start=0: iter(
      sequence_batches(
        split.sequences,
        split.labels,
        plan_for_epoch,
        train=train,
        segments_per_row=segments,
        shard_index=process_index,
        shard_count=process_count,
        num_threads=config.data_workers,
        start=start,
      )
    )

  return RunData(
    vocab,
    labels.num_classes,
    batches(train, train=True),
    batches(held_out["eval_data"], False),
    eval_spec,
    truncated,
    test_batches=batches(held_out["test_data"], False),
    class_names=class_names,
  )


def _warn_of_imbalance(train: _Split, held_out: dict, num_classes: int, class_names) -> None:
  """Logs, once, each dev or test split whose classes are not distributed like training's."""
  train_counts = class_counts(train.labels, num_classes)
  for flag, split in held_out.items():
    if split is not None:
      warning = imbalance_warning(
        flag, class_counts(split.labels, num_classes), train_counts, class_names
      )
      if warning:
        logging.warning("%s", warning)


def is_prepared(spec: str) -> bool:
  return spec.startswith(sources.PREPARED + ":")


def _view_split(view, config: Config) -> _Split:
  if config.task == "lm":
    return _Split(stream=view.stream())
  return _Split(sequences=view.sequences(), labels=view.label_ids())


# Where the sources are read: once, into the workdir.
DATA_DIR = "data"


# Beside a copy's data: the sizes, times and SHA-256 of the files it was read from.
SOURCES_FILE = "sources.json"


def _prepared_spec(spec: str, flag: str, config: Config, workdir: str, holdout: str = "") -> str:
  """`spec` itself if it names a prepared dataset (or nothing); else `prepared:DIR` of its copy,
  prepared into `WORKDIR/data/` on first use, by process 0 while the others wait.

  The copy is named by the spec and the flags that change how it reads, and holds the files'
  sizes, times and contents' hash: a resumed run reuses it, also when the files were copied or
  restored with new times (their hash is compared then), and reads changed files again, in the
  old copy's place. Its vocabulary and labels are the run's once the run has them (a resumed
  run, or `--init_from`); else they are fixed from the training split (without the documents
  `holdout` holds out), as the trainer always has.
  """
  if not spec or is_prepared(spec) or spec.startswith(sources.HOLDOUT):
    return spec
  with_labels = config.task == "classify"
  read_options = source_read_options(config)
  key = json.dumps(
    [
      spec,
      read_options,
      with_labels,
      config.tokenizer,
      config.vocab_size,
      config.num_classes,
      holdout,
      *([config.tokenizer_sample_mb] if config.tokenizer in SUBWORD_KINDS else []),
    ]
  )
  directory = os.path.join(
    workdir, DATA_DIR, f"{flag}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
  )
  failure = None
  if jax.process_index() == 0:
    try:
      # Taken before the files are read (a file changed while it is read is read again next
      # time); the hash, a read of every file, only where it is needed, and once.
      stamps, digest = _file_stamps(spec, flag), functools.cache(lambda: _files_digest(spec, flag))
      if not _copy_is_current(directory, spec, flag, stamps, digest):
        record = {"stamps": stamps, "sha256": digest()}
        _remove_copy(directory)
        _prepare_into(directory, spec, flag, config, workdir, read_options, holdout)
        paths.write_text(os.path.join(directory, SOURCES_FILE), json.dumps(record) + "\n")
      _remove_superseded_copies(directory, flag)
    except (DataError, ConfigError) as e:
      failure = e
  if jax.process_count() > 1:  # the others wait for process 0, and learn whether it failed
    failed = bool(multihost_utils.broadcast_one_to_all(np.array(failure is not None)))
    if failed and failure is None:
      failure = DataError(f"--{flag}={spec}: process 0 could not read it (see its log)")
  if failure is not None:
    raise failure
  return f"{sources.PREPARED}:{directory}"


def _copy_is_current(
  directory: str, spec: str, flag: str, stamps: list, digest: Callable[[], str]
) -> bool:
  """Whether the copy in `directory` is complete and was read from the files `spec` names as they
  are now (`stamps`, and `digest()` of their contents): the same sizes and times, or else the
  same contents (then the new times are kept)."""
  sources_path = os.path.join(directory, SOURCES_FILE)
  if not (paths.exists(os.path.join(directory, META_FILE)) and paths.exists(sources_path)):
    return False
  record = json.loads(paths.read_text(sources_path))
  if record["stamps"] == stamps:
    return True
  if record["sha256"] != digest():
    logging.info("--%s=%s has changed since it was read: reading it again", flag, spec)
    return False
  logging.info("--%s=%s: new file times, same contents; the copy read before is kept", flag, spec)
  paths.write_text(sources_path, json.dumps({**record, "stamps": stamps}) + "\n")
  return True


def _remove_copy(directory: str) -> None:
  """Removes an outdated or incomplete copy; its sources record first, so that a removal cut
  short is never taken for a current copy."""
  copy = epath.Path(directory)
  if copy.exists():
    (copy / SOURCES_FILE).unlink(missing_ok=True)
    copy.rmtree()


def _remove_superseded_copies(directory: str, flag: str) -> None:
  """Removes the copies of `--flag`'s data other than `directory`: read under other flags (or
  named by an earlier version, with the files' times), never read again (without this, each would
  stay in the workdir for good)."""
  current = epath.Path(directory)
  for copy in current.parent.glob(f"{flag}-*"):  # (a prepare's temporaries start with a dot)
    if copy.name != current.name and copy.is_dir():
      logging.info("Removing %s: --%s's files or flags have changed since it was read", copy, flag)
      copy.rmtree()


def _prepare_into(
  directory: str,
  spec: str,
  flag: str,
  config: Config,
  workdir: str,
  read_options: dict,
  holdout: str,
) -> None:
  has_vocabulary = paths.exists(os.path.join(workdir, VOCAB_FILE))
  if has_vocabulary and Vocabulary.load(os.path.join(workdir, VOCAB_FILE)).kind != config.tokenizer:
    raise ConfigError(
      f"--tokenizer={config.tokenizer} differs from the vocabulary saved in {workdir};"
      " resume with the same flags or use a new --workdir"
    )
  logging.info("Reading --%s=%s into %s (once)", flag, spec, directory)
  prepare_corpus(
    spec,
    directory,
    tokenizer=config.tokenizer,
    vocab_size=config.vocab_size,
    vocab_from=workdir if has_vocabulary else "",
    tokenizer_sample_mb=config.tokenizer_sample_mb,
    with_labels=config.task == "classify",
    num_classes=config.num_classes,
    read_options=read_options,
    flag=flag,
    holdout=holdout,
  )


def _source_files(spec: str, flag: str) -> list[str]:
  """The files a spec names, in its order (a missing one is reported later)."""
  files = []
  for part in spec.split(","):
    kind = part.partition(":")[0]
    path = sources.parse_spec(part, flag).path if kind in sources.FILE_KINDS else None
    if path and paths.exists(path):
      files.append(path)
  return files


def _file_stamps(spec: str, flag: str) -> list:
  """(size, modification time) of each file a spec names."""
  stamps = []
  for path in _source_files(spec, flag):
    stat = epath.Path(path).stat()
    stamps.append([stat.length, stat.mtime])
  return stamps


def _files_digest(spec: str, flag: str) -> str:
  """SHA-256 of the contents of the files a spec names, in order."""
  digests = []
  for path in _source_files(spec, flag):
    digest = hashlib.sha256()
    with epath.Path(path).open("rb") as f:
      while chunk := f.read(1 << 20):
        digest.update(chunk)
    digests.append(digest.hexdigest())
  return hashlib.sha256(" ".join(digests).encode()).hexdigest()


def open_prepared(spec: str, flag: str) -> tuple[PreparedDataset, object]:
  parsed = sources.parse_spec(spec, flag)
  if "," in spec:
    raise DataError(
      f"--{flag}={spec}: a prepared dataset cannot be joined with other specs; prepare them"
      " together (python -m pipeline.prepare --data=SPEC,SPEC)"
    )
  dataset = PreparedDataset(parsed.path, f"--{flag}")
  return dataset, dataset.view(parsed.slice, spec)


def _training_split(config: Config, workdir: str, train_spec: str, eval_spec: str):
  """(train split, holdout dev split or None, vocabulary, labels) of a prepared dataset: its
  index is read now, its records batch by batch (each process its own rows); the run's
  vocabulary and labels are the dataset's."""
  dataset, view = open_prepared(train_spec, "train_data")
  dev = None
  if eval_spec.startswith(sources.HOLDOUT):
    # Held out by document, like the in-memory sources' examples (the same fixed draw).
    documents = _documents_of(dataset, view)
    held = sources.holdout_mask(len(documents), eval_spec, "eval_data")
    view, dev = dataset.documents_view(documents[~held]), dataset.documents_view(documents[held])
  vocab = _adopt_vocabulary(dataset.vocab, os.path.join(workdir, VOCAB_FILE), train_spec)
  labels = None
  if config.task == "classify":
    labels = _adopt_labels(view.dataset, config, os.path.join(workdir, LABELS_FILE), train_spec)
  return _view_split(view, config), dev and _view_split(dev, config), vocab, labels


def _documents_of(dataset: PreparedDataset, view) -> np.ndarray:
  """The documents (indices) whose records a view holds."""
  starts = dataset.document_records()
  return np.unique(np.searchsorted(starts, view.records, side="right") - 1)


def _held_out_split(
  spec: str, flag: str, config: Config, vocab: Vocabulary, labels: Labels | None
) -> _Split | None:
  """A dev or test split (a prepared dataset) in the run's vocabulary and labels."""
  if not spec:
    return None
  dataset, view = open_prepared(spec, flag)
  if dataset.vocab != vocab:
    raise DataError(
      f"--{flag}={spec}: prepared with another vocabulary than the run's; prepare it with"
      " --vocab_from=THE_TRAINING_DATASET (or this run's workdir)"
    )
  if labels is not None and dataset.labelled and dataset.labels.names != labels.names:
    raise DataError(
      f"--{flag}={spec}: its class names {dataset.labels.names} differ from the run's"
      f" {labels.names}; prepare it with --vocab_from=THE_TRAINING_DATASET"
    )
  if labels is not None and dataset.labelled and dataset.labels.num_classes > labels.num_classes:
    raise DataError(
      f"--{flag}={spec}: {dataset.labels.num_classes} classes, more than the run's {labels.num_classes}"
    )
  return _view_split(view, config)


def _require_vocabulary_of_checkpoints(workdir: str) -> None:
  """A workdir with checkpoints keeps the vocabulary their token ids refer to: without it, the
  run would fix another from the data as it is now, and resume on ids that mean other tokens."""
  checkpoints = os.path.join(workdir, "checkpoints")
  if not paths.exists(os.path.join(workdir, VOCAB_FILE)) and paths.exists(checkpoints):
    if any(path.name.isdigit() for path in epath.Path(checkpoints).iterdir()):
      raise DataError(
        f"{os.path.join(workdir, VOCAB_FILE)}: missing, but the workdir has checkpoints whose token"
        " ids refer to it; put it back (WORKDIR/data/*/vocab.json holds a copy) or use a new"
        " --workdir"
      )


def _adopt_vocabulary(vocab: Vocabulary, path: str, spec: str) -> Vocabulary:
  """The prepared dataset's vocabulary becomes the run's (saved on the first run); a run that
  already has one (resumed, or from --init_from) must match it."""
  if paths.exists(path):
    saved = Vocabulary.load(path)
    if saved != vocab:
      raise DataError(
        f"--train_data={spec}: prepared with another vocabulary than the run's ({path}: its first"
        " run's, or the --init_from language model's); prepare the data with --vocab_from=THAT_DIR"
      )
    return saved
  if jax.process_index() == 0:
    vocab.save(path)
  return vocab


def _adopt_labels(dataset: PreparedDataset, config: Config, path: str, spec: str) -> Labels:
  if not dataset.labelled:
    raise DataError(
      f"--train_data={spec}: prepared without labels; prepare it again with --labels for"
      " --task=classify"
    )
  labels = dataset.labels
  if config.num_classes and config.num_classes != labels.num_classes:
    raise DataError(
      f"--num_classes={config.num_classes}: --train_data={spec} was prepared with"
      f" {labels.num_classes} classes (pipeline.prepare --num_classes)"
    )
  if paths.exists(path):
    saved = Labels.load(path)
    if saved != labels:
      raise DataError(
        f"--train_data={spec}: its labels differ from the run's ({path}); use a new --workdir"
      )
    return saved
  if jax.process_index() == 0:
    labels.save(path)
  return labels
