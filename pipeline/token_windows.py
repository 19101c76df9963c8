"""Per-token batches: a token stream cut into contiguous lanes, read window by window.

The stream is split into `num_lanes` (the global batch size) contiguous lanes, and window `w`
gives every lane its tokens `[w*T, (w+1)*T]`. Row `b` of one batch therefore continues row `b`
of the batch before it, which is what lets the trainer carry the hidden state from one
window to the next (truncated backpropagation through time).

Batch: `inputs [B, T]` and `targets [B, T]` int32 (targets are inputs shifted by one),
`mask [B, T]` bool (the target is a real token), `resets [B]` bool (start this row from a
zero state: the first window of an epoch, or every window when the state is not carried).
"""

import math
from collections.abc import Sequence

import grain
import numpy as np

from pipeline.errors import DataError
from pipeline.tokenizers import EOS, PAD, Vocabulary


def token_stream(documents: Sequence[dict], vocab: Vocabulary) -> np.ndarray:
  """All documents' token ids [N] in order, each document followed by `<eos>`."""
  pieces = []
  for document in documents:
    pieces.append(vocab.encode(document["text"]))
    pieces.append(np.array([EOS], np.int32))
  return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


class LaneWindows:
  """Random-access windows over the lanes `lanes` (this process's rows) of a token stream."""

  def __init__(self, tokens: np.ndarray, *, num_lanes: int, seq_len: int, lanes: range,
               carry_state: bool, what: str):
    lane_length = math.ceil(len(tokens) / num_lanes)
    if lane_length < 2:
      raise DataError(f"{what}: {len(tokens)} tokens cannot fill {num_lanes} lanes of at least"
                      f" 2 tokens; use more data or a smaller --batch_size")
    padded = np.full(lane_length * num_lanes, PAD, np.int32)
    padded[:len(tokens)] = tokens
    real = np.arange(lane_length * num_lanes) < len(tokens)
    self._tokens = padded.reshape(num_lanes, lane_length)[lanes.start:lanes.stop]
    self._real = real.reshape(num_lanes, lane_length)[lanes.start:lanes.stop]
    self._seq_len, self._carry_state = seq_len, carry_state
    # Each lane's last token is a target only, so a lane of L tokens has L-1 targets; the
    # last window is padded (masked) rather than dropped, so that every token is scored.
    self._num_windows = math.ceil((lane_length - 1) / seq_len)

  def __len__(self):
    return self._num_windows

  def __getitem__(self, window: int) -> dict:
    start, stop = window * self._seq_len, window * self._seq_len + self._seq_len + 1
    rows = self._tokens.shape[0]
    chunk = np.full((rows, self._seq_len + 1), PAD, np.int32)
    real = np.zeros((rows, self._seq_len + 1), bool)
    piece = self._tokens[:, start:stop]
    chunk[:, :piece.shape[1]] = piece
    real[:, :piece.shape[1]] = self._real[:, start:stop]
    return {
        "inputs": chunk[:, :-1],
        "targets": chunk[:, 1:],
        "mask": real[:, 1:],
        "resets": np.full(rows, window == 0 or not self._carry_state),
    }


def window_batches(tokens: np.ndarray, *, batch_size: int, seq_len: int, train: bool,
                   carry_state: bool, shard_index: int = 0, shard_count: int = 1,
                   num_threads: int = 2, what: str = "data", start: int = 0) -> grain.IterDataset:
  """Batches of windows; `batch_size` is global (the number of lanes), split over processes.

  Training data repeats forever, each epoch starting again from zero states; evaluation data
  is read once. `start`: the global index of the first batch (a resumed run's step), the same
  for any number of processes, since every process reads its rows of the same global batches.
  """
  rows = batch_size // shard_count
  lanes = range(shard_index * rows, (shard_index + 1) * rows)
  dataset = grain.MapDataset.source(LaneWindows(tokens, num_lanes=batch_size, seq_len=seq_len,
                                                lanes=lanes, carry_state=carry_state, what=what))
  if train:
    dataset = dataset.repeat()
  return dataset[start:].to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=max(2, 2 * num_threads)))
