"""Evaluation: benchmark files, method specs, metrics, and the runner behind ``dpvr eval``.

    from dpvr.evaluation import EvalSettings, run_eval
    run_eval(["vanilla", "lf=adapter:runs/lf/adapter"], out="runs/eval", settings=EvalSettings(blind="also"))

Metrics live in :mod:`dpvr.evaluation.metrics` only; everything else (the CLI, the lmms-eval plugin,
the tiny build's accuracy report) calls them.
"""

from dpvr.evaluation.generation import Prompt, blank_image, generate, user_turn
from dpvr.evaluation.methods import MethodSpec, parse_method, parse_methods
from dpvr.evaluation.metrics import parse_choice, parse_yes_no, pope_metrics, score, summarize, summarize_family
from dpvr.evaluation.runner import EvalSettings, accuracy_report, answer_records, evaluate_model, load_records, run_eval

__all__ = [
    "EvalSettings", "MethodSpec", "Prompt", "accuracy_report", "answer_records", "blank_image", "evaluate_model", "generate",
    "load_records", "parse_choice", "parse_method", "parse_methods", "parse_yes_no", "pope_metrics", "run_eval",
    "score", "summarize", "summarize_family", "user_turn",
]
