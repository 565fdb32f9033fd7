"""Model-arg handling of the lmms-eval plugin (importable without lmms-eval, so it is tested everywhere)."""

from __future__ import annotations

from dpvr.evaluation.methods import parse_method


def strip_quotes(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def method_spec_from_args(method=None, adapter=None, fastv_k=None, fastv_ratio=None):
    """The :class:`MethodSpec` the model args describe (``method`` may use ``;`` for its commas)."""
    method = strip_quotes(method)
    if adapter is not None:
        if method not in (None, "adapter"):
            raise ValueError(f"give either adapter=PATH or method=SPEC, not both (got method={method!r}, adapter={adapter!r})")
        extra = "".join(f",{k}={v}" for k, v in (("fastv_k", fastv_k), ("fastv_ratio", fastv_ratio)) if v is not None)
        return parse_method(f"adapter:{strip_quotes(adapter)}{extra}")
    if fastv_k is not None or fastv_ratio is not None:
        raise ValueError("fastv_k / fastv_ratio compose FastV with a DPVR adapter: pass adapter=PATH too "
                         "(or method=fastv;k=K;ratio=R for FastV alone)")
    text = str(method or "vanilla")
    if ":" not in text and ";" in text:  # vtw;k=4 -> vtw:k=4 (lmms-eval splits model args at commas)
        text = text.replace(";", ":", 1)
    return parse_method(text.replace(";", ","))


def context_to_messages(context: str, num_images: int, image_token: str = "<image>") -> list[dict]:
    """One user turn: the images where the context places ``<image>`` (if it places all of them), else before it."""
    if num_images and context.count(image_token) == num_images:
        content = []
        for i, piece in enumerate(context.split(image_token)):
            if i:
                content.append({"type": "image"})
            if piece.strip():
                content.append({"type": "text", "text": piece.strip()})
        return [{"role": "user", "content": content}]
    text = context.replace(image_token, "").strip()
    return [{"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": text}]}]
