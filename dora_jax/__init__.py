"""dora_jax: exploration-aware RL fine-tuning of language models in JAX/Flax."""

import importlib.util
import os

__version__ = "0.1.0"

# XLA's CPU backend: its YNNPACK/XNNPACK dot fusions run the decoder's attention and the update
# step slower than its default dot emitter on the CPUs we measured (benchmarks/train_step.py).
# `import dora_jax` adds these flags to XLA_FLAGS when all of these hold:
# - JAX's backends have not started yet (flags are read once, at start-up);
# - JAX will run on CPU only (JAX_PLATFORMS=cpu, or no GPU/TPU plugin installed);
# - jaxlib knows the flags (0.10.2 or newer: XLA aborts on unknown flags);
# - XLA_FLAGS does not already mention xnn or ynn (the user's own choice wins);
# - DORA_JAX_XLA_CPU_DEFAULTS is not 0.
_XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",
                  "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_DISABLED")
_ACCELERATOR_PLUGINS = ("jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")


def _cpu_only() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.strip().lower() == "cpu"
    return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def _set_xla_cpu_flags() -> None:
    import jaxlib.version
    from jax._src import xla_bridge
    current = os.environ.get("XLA_FLAGS", "")
    if (os.environ.get("DORA_JAX_XLA_CPU_DEFAULTS", "1") == "0" or xla_bridge.backends_are_initialized()
            or not _cpu_only() or jaxlib.version.__version_info__[:3] < (0, 10, 2)
            or "xnn" in current or "ynn" in current):
        return
    os.environ["XLA_FLAGS"] = " ".join([current, *_XLA_CPU_FLAGS]).strip()


_set_xla_cpu_flags()
