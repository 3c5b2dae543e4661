"""Per-device memory plan of a config, without devices: `python launch/plan.py --config=configs/indicator.py \\
    --mesh=data=1,fsdp=8,tensor=1 --device_memory_gb=80 [--prompt_len=N] [--config.x=y ...]`.

Prints a table of GiB per device per item (see `dora_jax.plan`) and exits non-zero
with what to change when the peak exceeds the device memory. Runs in seconds on a CPU.
"""

import sys

from absl import flags
from ml_collections import config_flags

from dora_jax import pipeline, plan

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/indicator.py[:variant].",
                                          lock_config=True)
_MESH = flags.DEFINE_string("mesh", None, "Mesh axis sizes, e.g. data=1,fsdp=8,tensor=1 (default: config.mesh).")
_DEVICE_MEMORY_GB = flags.DEFINE_float("device_memory_gb", 80.0,
                                       "Memory per device in GiB, as vendors quote it (80 for an H100 80GB).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", None,
                                   "Prompt tokens (default: config.task.max_prompt_len, else the task's own).")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    device_bytes = int(_DEVICE_MEMORY_GB.value * plan.GiB)
    try:
        figures = plan.plan(_CONFIG.value, plan.parse_mesh(_MESH.value) if _MESH.value else None, _PROMPT_LEN.value)
        print(plan.format_plan(figures, device_bytes))
        plan.check(figures, device_bytes)
    except (ValueError, OSError) as e:  # a config or file the user can fix: the message, not a traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    pipeline.launch(main)
