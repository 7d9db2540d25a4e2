"""Business rules shared by the CLI, the API and the worker."""
