"""Meta-training, meta-testing and head comparison (the engine behind the CLI)."""
