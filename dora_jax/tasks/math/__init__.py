"""Real math: problem files (JSON/JSONL/Parquet or TFDS), a safe grader, the math task."""
