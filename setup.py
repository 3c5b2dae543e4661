"""dora_jax: exploration-aware RL fine-tuning of language models in JAX/Flax."""

import setuptools

setuptools.setup(
    name="dora_jax",
    version="0.1.0",
    description="Exploration-aware RL fine-tuning (Dora, GRPO, Poly-EPO) of language models in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["dora_jax", "dora_jax.*", "configs"]),
    install_requires=[
        "jax>=0.6.0,<0.11",
        "flax>=0.10.6,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11.0,<0.13",
        "transformers>=4.51,<6",
        "safetensors>=0.4.3,<1",
        "tensorflow-datasets>=4.9.8,<4.10",
        "importlib_resources>=6,<7",  # TFDS builders defined outside tfds locate their code through it
        "pyarrow>=14,<30",  # Parquet data files
        "ml-collections>=1.0,<2",
        "grain>=0.2.10,<0.3",
        "numpy>=1.26,<3",
        "tqdm>=4.66,<5",
        "matplotlib>=3.8,<4",
        "tensorboardX>=2.6.2,<3",  # TensorBoard event files without TensorFlow
        "pillow>=9.1,<14",  # figures read back as images for TensorBoard
        "absl-py>=2.1,<3",
        "sympy>=1.12,<2",
        "gguf>=0.17,<0.20",  # GGUF model files (llama.cpp's format): launch/convert.py, packaged models
    ],
    extras_require={
        "test": [
            "pytest>=9.0,<10",
            "pytest-xdist>=3.5,<4",  # the README's test command runs the suite on two cores
            "chex>=0.1.89,<0.2",
            # CPU build only: an unpinned torch pulls several GB of CUDA packages.
            "torch==2.13.0",
            "accelerate>=1.0,<2",  # transformers' own GGUF loader, the reference of the GGUF parity test
        ],
    },
)
