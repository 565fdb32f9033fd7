"""The free teacher of DPVR training: the same wrapped model with routing off, and what the student feeds forward.

The backbone is frozen, so the unrouted base *is* the teacher: one extra no-grad forward of
``model.base`` (no second copy of the weights). Two things are read from it and from the routed
student, both at the visual positions of ``input_ids`` (row-major: sample by sample, in order):

- `unrouted_forward`: the base's logits (B, L, V) and the hidden states *entering* each requested
  layer (pre-hooks on the decoder layers; ``num_layers`` means the final norm's input, i.e. what
  the stack leaves);
- `side_capture`: the side branch's output at the visual positions, i.e. the image states that the
  ``fuse``/``kv`` layers receive in place of the deep stack's.

`feature_layers` says which layers of a plan receive the side branch's output (its ``fuse`` and
``kv`` layers; for ``ideal``, none of them does, and the side output is what the stack leaves, so
the target is the stack's output).
"""

from __future__ import annotations

import contextlib

import torch

from dpvr.config import ResolvedPlan


def feature_layers(plan: ResolvedPlan) -> list[int]:
    """Layers whose input the side branch's output stands in for (``num_layers``: the stack's output)."""
    layers = [i for i in plan.deep_layers if plan.modes[i] in ("fuse", "kv")]
    return layers or [plan.num_layers]


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """``module`` in eval mode (no dropout) for the block; every submodule's own mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@torch.no_grad()
def unrouted_forward(model, inputs: dict, layers: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The base's logits (B, L, V) and, for each of ``layers``, the visual states entering it (I, d).

    ``model`` is a `DPVRModel`; ``inputs`` the batch as the model takes it (``labels`` is ignored).
    Runs ``model.base`` (routing off) in eval mode without gradients.
    """
    backbone = model.backbone
    visual = backbone.visual_mask(inputs["input_ids"])  # (B, L) bool
    captured: dict[int, torch.Tensor] = {}

    def hook_for(layer: int):
        def grab(module, args, kwargs):
            captured[layer] = _hidden_of(args, kwargs)[visual]  # (I, d), row-major over (B, L)
        return grab

    handles = []
    for layer in sorted(set(layers)):
        module = backbone.layers[layer] if layer < backbone.num_layers else backbone.norm
        handles.append(module.register_forward_pre_hook(hook_for(layer), with_kwargs=True))
    base_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    try:
        with _eval_mode(model.base):
            logits = model.base(**base_inputs, use_cache=False).logits  # (B, L, V)
    finally:
        for h in handles:
            h.remove()
    return logits, captured


class SideCapture:
    """The side branch's visual states of the last routed forward (I, d), with their gradient; None before."""

    def __init__(self):
        self.states: torch.Tensor | None = None


@contextlib.contextmanager
def side_capture(model, input_ids: torch.Tensor):
    """Within the block, ``capture.states`` holds the side output at the visual positions of ``input_ids``."""
    capture = SideCapture()
    if model.side_branch is None:
        yield capture
        return
    visual = model.backbone.visual_mask(input_ids)  # (B, L) bool

    def grab(module, args, output):
        capture.states = output[visual[:, : output.shape[1]]]  # (B, P, d) -> (I, d): every visual token is in P

    handle = model.side_branch.register_forward_hook(grab)
    try:
        yield capture
    finally:
        handle.remove()
