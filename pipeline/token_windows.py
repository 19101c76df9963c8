"""Per-token batches: a token stream cut into contiguous lanes, read window by window.

The stream is split into `num_lanes` (the global batch size) contiguous lanes, and window `w`
gives every lane its tokens `[w*T, (w+1)*T]`. Row `b` of one batch therefore continues row `b`
of the batch before it, which is what lets the trainer carry the hidden state from one
window to the next (truncated backpropagation through time).

Batch: `inputs [B, T]` and `targets [B, T]` int32 (targets are inputs shifted by one),
`mask [B, T]` bool (the target is a real token), `resets [B]` bool (start this row from a
zero state: the first window of an epoch, or every window when the state is not carried).

`reverse`: the stream is read from its last token to its first, so a language model trained on
it predicts each token from the text after it (a backward language model, as ULMFiT and ELMo
train beside the forward one). Each document then reads backwards, and its `<eos>` separates it
from the document that came before it in the stream.
"""

import math
from collections.abc import Sequence

import grain
import numpy as np

from pipeline.errors import DataError
from pipeline.prepared import ArrayStream
from pipeline.tokenizers import EOS, PAD, Vocabulary


def token_stream(documents: Sequence[dict], vocab: Vocabulary) -> np.ndarray:
  """All documents' token ids [N] in order, each document followed by `<eos>`."""
  pieces = []
  for document in documents:
    pieces.append(vocab.encode(document["text"]))
    pieces.append(np.array([EOS], np.int32))
  return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


class ReversedStream:
  """A token stream (anything with `len()` and `read_block`) read from its end to its start:
  position i is the wrapped stream's position N-1-i. Reads the same tokens as the wrapped stream,
  so a prepared corpus is still read only where the lanes are."""

  def __init__(self, stream):
    self._stream = stream
    self._size = len(stream)

  def __len__(self):
    return self._size

  def read_block(
    self, starts: Sequence[int], width: int, pad: int
  ) -> tuple[np.ndarray, np.ndarray]:
    starts = np.asarray(starts, np.int64)
    stops = np.clip(starts + width, 0, self._size)
    lengths = np.maximum(stops - np.maximum(starts, 0), 0)
    # Reversed [start, stop) is the wrapped stream's [N - stop, N - start), read backwards.
    block, _ = self._stream.read_block(self._size - stops, width, pad)
    # Row r's first lengths[r] tokens, reversed, by one gather (no copy per row).
    source = lengths[:, None] - 1 - np.arange(width)
    real = source >= 0
    tokens = np.take_along_axis(block, np.maximum(source, 0), axis=1)
    return np.where(real, tokens, pad).astype(np.int32, copy=False), real


class LaneWindows:
  """Random-access windows over the lanes `lanes` (this process's rows) of a token stream.

  `stream` is a token array or any object with `len()` and `read_block(starts, width, pad)`
  (`pipeline.prepared.PreparedStream`): each window reads only its lanes' tokens, so a process
  touches only its share of a prepared corpus.
  """

  def __init__(
    self,
    stream,
    *,
    num_lanes: int,
    seq_len: int,
    lanes: range,
    carry_state: bool,
    what: str,
    reverse: bool = False,
  ):
    self._stream = ArrayStream(stream) if isinstance(stream, np.ndarray) else stream
    if reverse:
      self._stream = ReversedStream(self._stream)
    self._size = len(self._stream)
    self._lane_length = math.ceil(self._size / num_lanes)
    if self._lane_length < 2:
      raise DataError(
        f"{what}: {self._size} tokens cannot fill {num_lanes} lanes of at least"
        f" 2 tokens; use more data or a smaller --batch_size"
      )
    self._lanes, self._seq_len, self._carry_state = lanes, seq_len, carry_state
    # Each lane's last token is a target only, so a lane of L tokens has L-1 targets; the
    # last window is padded (masked) rather than dropped, so that every token is scored.
    self._num_windows = math.ceil((self._lane_length - 1) / seq_len)

  def __len__(self):
    return self._num_windows

  def __getitem__(self, window: int) -> dict:
    # Lane b holds stream positions [b*L, (b+1)*L); past the stream's end it is padding.
    offset = window * self._seq_len
    width = min(self._seq_len + 1, self._lane_length - offset)
    starts = [lane * self._lane_length + offset for lane in self._lanes]
    chunk, real = self._stream.read_block(starts, width, PAD)
    if width < self._seq_len + 1:  # the lanes' last window
      chunk = np.pad(chunk, ((0, 0), (0, self._seq_len + 1 - width)), constant_values=PAD)
      real = np.pad(real, ((0, 0), (0, self._seq_len + 1 - width)))
    rows = len(self._lanes)
    return {
      "inputs": chunk[:, :-1],
      "targets": chunk[:, 1:],
      "mask": real[:, 1:],
      "resets": np.full(rows, window == 0 or not self._carry_state),
    }


def window_batches(
  tokens,
  *,
  batch_size: int,
  seq_len: int,
  train: bool,
  carry_state: bool,
  shard_index: int = 0,
  shard_count: int = 1,
  num_threads: int = 2,
  what: str = "data",
  start: int = 0,
  reverse: bool = False,
) -> grain.IterDataset:
  """Batches of windows; `batch_size` is global (the number of lanes), split over processes.

  Training data repeats forever, each epoch starting again from zero states; evaluation data
  is read once. `start`: the global index of the first batch (a resumed run's step), the same
  for any number of processes, since every process reads its rows of the same global batches.
  `reverse`: the stream read from its end (a backward language model's data).
  """
  rows = batch_size // shard_count
  lanes = range(shard_index * rows, (shard_index + 1) * rows)
  dataset = grain.MapDataset.source(
    LaneWindows(
      tokens,
      num_lanes=batch_size,
      seq_len=seq_len,
      lanes=lanes,
      carry_state=carry_state,
      what=what,
      reverse=reverse,
    )
  )
  if train:
    dataset = dataset.repeat()
  return dataset[start:].to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2, 2 * num_threads))
  )
