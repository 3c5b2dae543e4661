"""A TFDS builder over local math files, for users who keep their data in TFDS (docs/design.md §7).

    source = data_source(manual_dir="~/data/math", data_dir="~/tensorflow_datasets", split="train")
    source[0]  # {"problem": "...", "answer": "...", "solution": "..."}

Each file `SPLIT.{json,jsonl,parquet}` in `manual_dir` becomes split SPLIT (`train.jsonl` ->
"train", `aime2025.json` -> "aime2025"), read with the same row checks as plain files. The
builder writes ArrayRecord files and is read with `as_data_source`, so neither step needs
TensorFlow, and the source is random access, which grain consumes directly. The first call
prepares the dataset; later calls reuse it.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from dora_jax.tasks.math import records

FIELDS = ("problem", "answer", "solution")


class MathProblems(tfds.core.GeneratorBasedBuilder):
    """DeepScaleR / AIME-format rows (problem, answer, optional solution) from files in the manual dir."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Place SPLIT.jsonl / SPLIT.json / SPLIT.parquet files with `problem` and `answer` "
                                    "fields (and optionally `solution`) in the manual dir.")

    def __init__(self, *, fields: dict[str, str] | None = None, **kwargs):
        self._fields = fields or {name: name for name in FIELDS}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: `dataset_info_from_configs` would look for metadata files next to this module.
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                     features=tfds.features.FeaturesDict({f: tfds.features.Text() for f in FIELDS}))

    def _split_generators(self, dl_manager):
        manual = str(dl_manager.manual_dir)
        files = sorted(f for f in os.listdir(manual) if os.path.splitext(f)[1].lstrip(".") in records.FORMATS)
        if not files:
            raise records.DataError(f"{manual}: no .json, .jsonl or .parquet files to build the TFDS dataset from.")
        return {os.path.splitext(f)[0]: self._generate_examples(os.path.join(manual, f)) for f in files}

    def _generate_examples(self, path: str):
        rows = records.read_rows(path, self._fields, optional=("solution",))
        for i, row in enumerate(rows):
            yield i, {f: row.get(f, "") for f in FIELDS}


def data_source(manual_dir: str, data_dir: str, split: str, fields: dict[str, str] | None = None):
    """The random-access TFDS source of `split`, prepared from `manual_dir` into `data_dir` on first use."""
    manual_dir, data_dir = os.path.expanduser(manual_dir), os.path.expanduser(data_dir)
    builder = MathProblems(data_dir=data_dir, file_format="array_record", fields=fields)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    if split not in builder.info.splits:
        raise records.DataError(f"TFDS dataset {builder.data_dir} has splits {sorted(builder.info.splits)}, not "
                                f"{split!r}; add {split}.jsonl to {manual_dir} (and delete {builder.data_dir} to rebuild).")
    return builder.as_data_source(split=split)


def read_split(manual_dir: str, data_dir: str, split: str, fields: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The rows of `split` as text dicts (TFDS stores text as bytes)."""
    source = data_source(manual_dir, data_dir, split, fields)
    return [{f: v.decode("utf-8") if isinstance(v, bytes) else v for f, v in source[i].items()}
            for i in range(len(source))]
