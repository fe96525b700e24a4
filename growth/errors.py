"""Errors raised on bad input. Each names the offending parameter or path and what was expected."""


class GrowthError(ValueError):
    """Base class: invalid growth request (targets, method, numerics)."""


class SpecError(GrowthError):
    """A neuron-space spec does not match the parameter pytree it is applied to."""


class CheckpointError(GrowthError):
    """A checkpoint is missing, incomplete or corrupt."""
