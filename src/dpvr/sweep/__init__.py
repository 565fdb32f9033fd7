"""`dpvr sweep`: train and evaluate every point of a grid (split, fusion layers, side depth, LR, ...)."""

from dpvr.sweep.grid import Point, expand_grid, parse_grid
from dpvr.sweep.run import SweepSettings, reference_accuracy, run_sweep

__all__ = ["Point", "SweepSettings", "expand_grid", "parse_grid", "reference_accuracy", "run_sweep"]
