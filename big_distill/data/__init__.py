"""Input pipeline: TFDS -> per-process shard -> preprocessing -> batches."""
