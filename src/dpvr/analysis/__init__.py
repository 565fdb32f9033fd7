"""Saturation analysis (SPEC §8): per-layer curves of vision and text tokens and a suggested split.

- :func:`analyze_saturation` — statistics of a loaded model over an iterable of samples.
- :func:`run_analysis` — load model + LLaVA JSON data, analyse, write ``saturation.json``/``.png``
  (``dpvr analyze``).
- :func:`detect_transitions`, :func:`suggest_split` — transitions and the split from saved curves.
"""

from dpvr.analysis.saturate import SaturationResult, analyze_saturation, run_analysis, write_outputs
from dpvr.analysis.transitions import detect_transitions, suggest_split, transition_layer

__all__ = ["SaturationResult", "analyze_saturation", "run_analysis", "write_outputs", "detect_transitions",
           "suggest_split", "transition_layer"]
