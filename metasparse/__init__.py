"""metasparse: few-shot meta-learning with sparse, differentiable base learners."""
__version__ = "0.1.0"
