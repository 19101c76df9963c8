"""`run_config.json`: the flags a run was started with and the topology that last trained it,
checked when the run resumes.

A resume must keep the model flags (they fix the parameters' shapes) and the data layout
(`--batch_size`, `--seq_len`: they fix which tokens global batch `k` holds). It may change the
topology, processes and devices, as long as the global batch still divides by the devices: the
data position is the step and arrays are restored with the new mesh's shardings (elastic resume).
"""

import json
import os

from pipeline import paths
from training.bookkeeping.metrics_log import write_json
from training.config import Config, ConfigError

RUN_CONFIG_FILE = "run_config.json"
DATA_LAYOUT_FIELDS = ("batch_size", "seq_len")


def _read(workdir: str) -> dict | None:
  path = os.path.join(workdir, RUN_CONFIG_FILE)
  if not paths.exists(path):
    return None
  return json.loads(paths.read_text(path))


def check_resume(config: Config, workdir: str) -> None:
  """Refuses, naming the flag, a resume that changes the model or the data layout. Reads only."""
  saved = _read(workdir)
  if saved is None:
    return
  current = json.loads(json.dumps(config.model_fields()))  # tuples as lists, as saved
  for name, value in current.items():
    if name in saved and saved[name] != value:
      raise ConfigError(
        f"--{name}={value} differs from {saved[name]} of the run in {workdir};"
        " resume with the same model flags or use a new --workdir"
      )
  full = saved.get("full_config", {})
  for name in DATA_LAYOUT_FIELDS:
    if name in full and full[name] != getattr(config, name):
      raise ConfigError(
        f"--{name}={getattr(config, name)} differs from {full[name]} of the run in {workdir};"
        " it fixes which data each step reads: resume with the same value or use a new --workdir"
      )


def check_devices_for_resume(config: Config, workdir: str, devices: int) -> None:
  """Refuses a resume whose device count does not divide the global batch, saying which
  topology trained the run and which device counts would work. Reads only."""
  before = (_read(workdir) or {}).get("topology")
  if before and config.batch_size > 0 and config.batch_size % devices:
    fits = [d for d in range(1, config.batch_size + 1) if config.batch_size % d == 0]
    raise ConfigError(
      f"--batch_size={config.batch_size}: the run in {workdir} was trained by"
      f" {before['processes']} process(es) x {before['devices'] // before['processes']} device(s);"
      f" this job has {devices} devices, which do not divide the global batch of"
      f" {config.batch_size}: resume on {', '.join(map(str, fits[-6:]))} devices (any divisor"
      f" of {config.batch_size})"
    )


def record_run(config: Config, workdir: str, processes: int, devices: int) -> dict | None:
  """Writes the flags (first run) and this job's topology; returns the topology that wrote the
  checkpoints so far (None on a first run). Call from process 0 only."""
  saved = _read(workdir)
  if saved is None:
    saved = {
      **json.loads(json.dumps(config.model_fields())),
      "full_config": json.loads(json.dumps(config.__dict__)),
    }
  before = saved.get("topology")
  saved["topology"] = {"processes": processes, "devices": devices}
  write_json(os.path.join(workdir, RUN_CONFIG_FILE), saved)
  return before
