"""The one place mesh-tensorflow is imported. Everything else does
`from model.compat import tf, mtf`.

mesh-tensorflow 0.1.21 calls `ops.register_tensor_conversion_function`, which
TensorFlow 2.13+ moved to `tensor_conversion_registry`; TF >= 2.16 drops
`tf.compat.v1.estimator`, which it also needs, so TF is pinned to 2.15.1.
"""
import logging
import os
import warnings

if not os.environ.get("GPTSAN_VERBOSE"):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

import tensorflow.compat.v1 as tf  # noqa: E402
from tensorflow.python.framework import ops as _tf_ops  # noqa: E402

if not os.environ.get("GPTSAN_VERBOSE"):
    tf.get_logger().setLevel(logging.ERROR)
    tf.logging.set_verbosity(tf.logging.ERROR)
    try:
        from absl import logging as _absl_logging
        _absl_logging.set_verbosity(_absl_logging.ERROR)
    except ImportError:  # absl ships with TensorFlow; be lenient anyway
        pass


if not hasattr(_tf_ops, "register_tensor_conversion_function"):
    from tensorflow.python.framework import tensor_conversion_registry as _registry
    _tf_ops.register_tensor_conversion_function = _registry.register_tensor_conversion_function

import mesh_tensorflow as mtf  # noqa: E402

tf.disable_v2_behavior()

__all__ = ["tf", "mtf"]

# The Switch layer lives in mesh_tensorflow.transformer, which imports
# tensorflow-datasets at import time (hence that pin in requirements.txt).
from mesh_tensorflow.transformer import moe as mtf_moe  # noqa: E402
from mesh_tensorflow import placement_mesh_impl  # noqa: E402
# The TPU mesh implementation; importing it needs no TPU.
from mesh_tensorflow import simd_mesh_impl  # noqa: E402

__all__ += ["mtf_moe", "placement_mesh_impl", "simd_mesh_impl"]
