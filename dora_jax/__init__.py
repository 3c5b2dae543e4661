"""dora_jax: exploration-aware RL fine-tuning of language models in JAX/Flax."""

import os

__version__ = "0.1.0"

# XLA's CPU backend: its YNNPACK/XNNPACK dot fusions run the decoder's attention and the update
# step slower than its default dot emitter on the CPUs we measured (benchmarks/train_step.py).
# Applied only if the backend has not started, only for jaxlib versions that know the flags
# (XLA aborts on unknown ones), and never over a user's own setting of them.
# DORA_JAX_XLA_CPU_DEFAULTS=0 leaves XLA_FLAGS alone.
_XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",
                  "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_DISABLED")


def _set_xla_cpu_flags() -> None:
    import jax
    if os.environ.get("DORA_JAX_XLA_CPU_DEFAULTS", "1") == "0" or jax.__version_info__[:3] < (0, 10, 2):
        return
    current = os.environ.get("XLA_FLAGS", "")
    if "ynn_fusion" in current or "xnn_graph_fusion" in current:
        return
    os.environ["XLA_FLAGS"] = " ".join([current, *_XLA_CPU_FLAGS]).strip()


_set_xla_cpu_flags()
