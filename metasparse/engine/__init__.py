"""Meta-training, meta-testing and head comparison on models and episode streams (the
engine behind :mod:`metasparse.api`; it never imports the API or the command line)."""
