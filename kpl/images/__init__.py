"""Image data and engines: datasets, encoding and the feature cache, the Ray engine and its shards."""
