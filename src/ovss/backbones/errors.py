"""Why a weights file was refused (a leaf module: every reader raises these)."""


class WeightsCorruptError(ValueError):
    """A weights file that cannot be parsed: truncated, random bytes, not a checkpoint at all."""


class PickleRefusedError(ValueError):
    """A pickled checkpoint that needs arbitrary Python objects to load (refused unless trusted)."""


class UnsafeWeightsError(WeightsCorruptError):
    """A TorchScript archive that would need its own code run to load (never done, even trusted)."""


class NonFiniteWeightsError(WeightsCorruptError):
    """A checkpoint with NaN or Inf in a floating tensor: a broken or diverged run, never usable."""
