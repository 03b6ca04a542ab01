"""nasdistill: neural architecture search on distilled proxy datasets.

Distil a labelled image dataset once into a small synthetic proxy, search architectures on the
proxy with Optuna or NNI, and validate how well the proxy's ranking matches full-data training.
"""

__version__ = "0.1.0"
