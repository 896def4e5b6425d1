"""The spout input: num_spout values that steer what kind of text a model
generates (zeros or a one-hot class after spout fine-tuning, uniform noise for
the released "spout_is_uniform" model). One place checks that a model has spout
weights and turns a class number or values into the vector."""
import numpy as np

from model.errors import UserError


class NoSpoutError(UserError, ValueError):
    """A spout input was given to a model without spout weights."""


def require(num_spout):
    """num_spout, or NoSpoutError when the model has no spout weights."""
    if not num_spout:
        raise NoSpoutError("this model has no spout weights (num_spout is 0 in parameters.json)")
    return num_spout


def vector(spout, num_spout):
    """None, a class number (one-hot) or num_spout values -> float32 [num_spout]
    (None stays None). Wrong classes and sizes raise ValueError."""
    if spout is None:
        return None
    require(num_spout)
    if isinstance(spout, (int, np.integer)):
        if not 0 <= spout < num_spout:
            raise ValueError("spout class %d is outside 0..%d" % (spout, num_spout - 1))
        return np.eye(num_spout, dtype=np.float32)[spout]
    values = np.asarray(spout, np.float32).reshape(-1)
    if values.size != num_spout:
        raise ValueError("spout holds %d values but the model's num_spout is %d"
                         % (values.size, num_spout))
    if not np.all(np.isfinite(values)):
        raise ValueError("spout holds non-finite values")
    return values
