"""Data layer: ingestion, synthetic markets, validation, features, splits, the feature store."""
