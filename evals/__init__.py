"""Router evaluation: accuracy, fallback quality, calibration and latency, with reports.

The ``adapter-router eval`` and ``adapter-router calibrate`` commands are built from these
parts: labelled records (:mod:`evals.dataset`), label maps (:mod:`evals.label_map`), metric
functions (:mod:`evals.metrics`), threshold calibration (:mod:`evals.calibration`), and text
and HTML reports.
"""

from evals.calibration import Calibration, CalibrationTarget, calibrate, parse_target
from evals.dataset import EvalRecord, load_records, select_split
from evals.errors import CalibrationError, EvalError, GatewayError
from evals.evaluation import Evaluation, evaluate
from evals.gateway_router import GatewayRouter
from evals.label_map import BASE_MODEL, LabelMap, RouterDomains, expected_targets, load_label_map
from evals.local_router import LocalRouter
from evals.outcome import EvaluatedRouter, RoutingOutcome

__all__ = [
    "BASE_MODEL",
    "Calibration",
    "CalibrationError",
    "CalibrationTarget",
    "EvalError",
    "EvalRecord",
    "EvaluatedRouter",
    "Evaluation",
    "GatewayError",
    "GatewayRouter",
    "LabelMap",
    "LocalRouter",
    "RouterDomains",
    "RoutingOutcome",
    "calibrate",
    "evaluate",
    "expected_targets",
    "load_label_map",
    "load_records",
    "parse_target",
    "select_split",
]
