def xla_flags(devices: int, optimise: bool = False) -> str:
    """XLA_FLAGS of a test process (the suite's, and the children tests start): `devices` simulated CPU devices,
    LLVM optimisation off unless `optimise`. The tests check results, not speed, and the smoke models' programs then
    compile about 3x faster, which is most of what the suite spends. Every process of an equivalence test compiles
    alike. A real model's programs run longer than they compile: its test optimises."""
    flags = f"--xla_force_host_platform_device_count={devices}"
    return flags if optimise else flags + " --xla_backend_optimization_level=0"
