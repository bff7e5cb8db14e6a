"""DDNN: distributed deep neural networks over the cloud, the edge and end devices.

The shared library of every DDNN process: binarized layers, the model and its topology,
aggregation, exits, training, evaluation, data and the command line.
"""

__version__ = "0.1.0"
