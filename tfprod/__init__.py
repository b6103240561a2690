"""tfprod: TensorFlow production serving in Python."""

__version__ = "0.1.0"
