"""fastairl: fast augmentation-invariant representation learning."""
__version__ = "0.1.0"
