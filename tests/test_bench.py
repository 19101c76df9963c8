"""The benchmarks' own arithmetic (their runs are benchmarks, not tests)."""

import pytest

from bench import project_side, throughput
from bench.project_side import steady_windows


def row(step, *shapes):
  return {"step": step, "batch_shapes": [list(shape) for shape in shapes]}


def test_steady_windows_are_those_whose_shapes_all_came_before():
  rows = [
    row(5, (64, 100)),
    row(10, (64, 100), (64, 200)),
    row(15, (64, 100)),
    row(20, (64, 200), (64, 300)),
    row(25, (64, 300), (64, 100)),
  ]
  assert [r["step"] for r in steady_windows(rows)] == [15, 25]
  # One shape (a language model): every window but the first, which compiles.
  assert [r["step"] for r in steady_windows([row(s, (32, 64)) for s in (5, 10, 15)])] == [10, 15]


def test_no_steady_window_asks_for_more_steps():
  with pytest.raises(SystemExit, match="pass a larger --steps"):
    steady_windows([row(5, (64, 100)), row(10, (64, 200))])


def test_peak_fractions_use_the_fastest_matmul_and_skip_a_missing_peer():
  results = [
    {
      "flops_per_token": 2e6,
      "trainer_fed_tokens_per_sec": 50_000.0,
      "torch_tokens_per_sec": 40_000.0,
    },
    {"flops_per_token": 1e6, "trainer_fed_tokens_per_sec": 10_000.0},
  ]
  throughput.add_peak_fractions(results, 200e9)
  assert results[0]["project_peak_fraction"] == pytest.approx(0.5)
  assert results[0]["torch_peak_fraction"] == pytest.approx(0.4)
  assert (
    results[1]["project_peak_fraction"] == pytest.approx(0.05)
    and "torch_peak_fraction" not in results[1]
  )


def test_each_round_is_printed_as_it_ends_with_its_ratio(capsys):
  measured = {
    "bare": {"tokens_per_sec": 1000.4},
    "trainer": {"tokens_per_sec": 900.0, "fed_tokens_per_sec": 950.0},
    "torch": {"tokens_per_sec": 1000.0},
  }
  throughput.print_round("char_1x128", 0, measured)
  throughput.print_round("char_1x128", 1, dict(measured, torch=None))  # no PyTorch installed
  first, second = capsys.readouterr().err.splitlines()
  assert first == (
    'round: {"config": "char_1x128", "round": 1, "bare_step_tokens_per_sec": 1000,'
    ' "trainer_tokens_per_sec": 900, "trainer_fed_tokens_per_sec": 950, "torch_tokens_per_sec": 1000,'
    ' "ratio": 0.95}'
  )
  assert second.endswith('"torch_tokens_per_sec": null}')


def test_the_smallest_model_gets_more_rounds_than_asked_and_no_config_fewer():
  assert throughput.repeats_for("char_1x128", 2) == throughput.MIN_REPEATS["char_1x128"] == 6
  assert throughput.repeats_for("char_1x128", 9) == 9
  assert throughput.repeats_for("char_2x512", 2) == 2


def test_the_table_says_which_configs_ran_more_rounds(capsys):
  result = {
    "description": "char LM, 1 x 128",
    "time_loop": "oneDNN",
    "flops_per_token": 8e5,
    "trainer_tokens_per_sec": 1.0,
    "bare_step_tokens_per_sec": 1.0,
    "loop_overhead": 0.0,
    "loop_overhead_range": [0.0, 0.0],
    "project_peak_fraction": 0.5,
  }
  throughput.print_table([result], [2e11], 30, 2)
  assert (
    "medians of 2 rounds (char_1x128: 6; in parentheses: the range over rounds)"
    in capsys.readouterr().out
  )
  throughput.print_table([result], [2e11], 30, 6)
  assert "medians of 6 rounds (in parentheses: the range over rounds)" in capsys.readouterr().out


def test_the_bare_step_is_timed_over_the_trainers_steady_windows_of_the_same_batches(tmp_path):
  from training.config import Config

  config = Config(
    task="classify",
    train_data="synthetic:recall",
    model="lstm",
    num_layers=1,
    hidden_size=16,
    embed_size=16,
    batch_size=8,
    seq_len=32,
    batching="bucket",
    num_steps=24,
    log_every=4,
    eval_every=0,
    checkpoint_every=240,
  )
  bare = project_side.measure_bare_step(config, str(tmp_path / "bare"), 24)
  trainer = project_side.measure_trainer(config, str(tmp_path / "trainer"))
  assert len(bare["batch_shapes"]) > 1  # bucketed: the windows differ in what they hold
  assert bare["batch_shapes"] == trainer["batch_shapes"] and bare["windows"] == trainer["windows"]
  assert bare["tokens_per_sec"] > 0
  from training.loop.data import prepare_data

  data = prepare_data(config, str(tmp_path / "bare"))  # what PyTorch's model is built with
  assert (trainer["vocab_size"], trainer["num_classes"]) == (len(data.vocab), data.num_classes)


def test_each_side_runs_in_a_process_of_its_own_with_the_shared_compilation_cache(tmp_path):
  """As `bench.throughput` runs them: a fresh process per side, the bare step compiling into the
  cache and the trainer loading from it; figures come back as in-process ones do."""
  from training.config import Config

  config = Config(
    task="lm",
    train_data="synthetic:copy",
    model="lstm",
    num_layers=1,
    hidden_size=16,
    embed_size=16,
    batch_size=4,
    seq_len=16,
    num_steps=12,
    log_every=3,
    eval_every=0,
    checkpoint_every=120,
  )
  cache = tmp_path / "cache"
  bare = project_side.measure_in_own_process("bare", config, str(tmp_path / "bare"), str(cache))
  assert any(cache.iterdir())  # the bare step compiled into the shared cache
  trainer = project_side.measure_in_own_process(
    "trainer", config, str(tmp_path / "trainer"), str(cache)
  )
  assert bare["batch_shapes"] == trainer["batch_shapes"] == [(4, 16)]
  assert bare["windows"] == trainer["windows"] == 3  # 4 windows, the first compiles
  assert (
    bare["tokens_per_sec"] > 0 and trainer["fed_tokens_per_sec"] >= trainer["tokens_per_sec"] > 0
  )
  with pytest.raises(RuntimeError, match="unknown side 'both'"):
    project_side.measure_in_own_process("both", config, str(tmp_path / "other"), str(cache))
