"""Dataset loading, validation, analysis and versioning."""
