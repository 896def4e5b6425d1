"""GPTSAN: a Switch Transformer with Prefix-LM masking, spout and extension layers.

Importing this package is cheap; TensorFlow and mesh-tensorflow are only imported
by the modules that need them (so every script's --help stays fast).
"""
