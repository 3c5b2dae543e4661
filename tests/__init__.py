import jaxlib.version

# jaxlib 0.10.2 knows this flag (an older XLA aborts on a flag it does not know).
_FUSION_EMITTERS_FLAG = jaxlib.version.__version_info__[:3] >= (0, 10, 2)


def xla_flags(devices: int, optimise: bool = False) -> str:
    """XLA_FLAGS of a test process (the suite's, and the children tests start): `devices` simulated CPU devices,
    LLVM optimisation and XLA:CPU's fusion emitters off unless `optimise`. The tests check results, not speed, and
    compiling is most of what the suite spends: the smoke models' programs compile about 3x faster at LLVM level 0,
    and without the emitters the smoke pipeline test's compile time fell from 38 s to 22 s (`jax_log_compiles`).
    Every process of an equivalence test compiles alike. A real model's programs run longer than they compile: its
    test optimises."""
    flags = f"--xla_force_host_platform_device_count={devices}"
    if not optimise:
        flags += " --xla_backend_optimization_level=0"
        if _FUSION_EMITTERS_FLAG:
            flags += " --xla_cpu_use_fusion_emitters=false"
    return flags
