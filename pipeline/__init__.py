"""Input pipeline: data sources, tokenisers and Grain datasets that yield numpy batches.

The pipeline knows nothing of the model: it turns `KIND:PATH[SLICE]` specs into
dicts of numpy arrays (`inputs`, `mask`, `targets` or `labels`, ...).
"""
