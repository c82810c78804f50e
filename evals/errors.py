"""Errors of the evaluation tools; each message names the file, line or value and the fix."""

from __future__ import annotations


class EvalError(ValueError):
    """An evaluation input (data file, label map, router, gateway) is missing or invalid."""


class CalibrationError(EvalError):
    """No threshold meets the calibration target on the validation records."""


class GatewayError(EvalError):
    """The gateway under evaluation cannot be reached or returned an invalid response."""
