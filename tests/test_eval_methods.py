"""Method-spec grammar of `dpvr eval --method` and its errors."""

from __future__ import annotations

import pytest

from dpvr.evaluation.methods import parse_method, parse_methods


@pytest.mark.parametrize("text,kind,path,options,label", [
    ("vanilla", "vanilla", None, {}, "vanilla"),
    ("base", "vanilla", None, {}, "vanilla"),
    ("ref=vanilla", "vanilla", None, {}, "ref"),
    ("adapter:runs/lf/adapter", "adapter", "runs/lf/adapter", {}, "adapter(lf)"),
    ("lf=adapter:runs/lf/adapter", "adapter", "runs/lf/adapter", {}, "lf"),
    ("adapter:runs/lf/adapter,fastv_k=2,fastv_ratio=0.5", "adapter", "runs/lf/adapter",
     {"fastv_k": 2, "fastv_ratio": 0.5}, "adapter(lf,fastv_k=2,fastv_ratio=0.5)"),
    ("adapter:/data/x=1:y/adapter", "adapter", "/data/x=1:y/adapter", {}, "adapter(x=1:y)"),
    ("lora:runs/lora16/adapter", "lora", "runs/lora16/adapter", {}, "lora(lora16)"),
    ("full:runs/full/model", "full", "runs/full/model", {}, "full(full)"),
    ("fastv", "fastv", None, {}, "fastv"),
    ("fastv:k=2,ratio=0.25", "fastv", None, {"k": 2, "ratio": 0.25}, "fastv(k=2,ratio=0.25)"),
    ("fastv:ratio=0.75", "fastv", None, {"ratio": 0.75}, "fastv(ratio=0.75)"),
    ("vtw:k=4", "vtw", None, {"k": 4}, "vtw(k=4)"),
    ("early exit=vtw:k=4", "vtw", None, {"k": 4}, "early exit"),
])
def test_specs(text, kind, path, options, label):
    spec = parse_method(text)
    assert (spec.kind, spec.path, spec.options, spec.label) == (kind, path, options, label)
    assert spec.to_dict()["spec"] == text


def test_peer_specs_build_their_configs():
    assert parse_method("vtw:k=4").dpvr_config().split == 4
    cfg = parse_method("fastv:k=3,ratio=0.25").dpvr_config()
    assert (cfg.variant, cfg.fastv_k, cfg.fastv_ratio) == ("fastv", 3, 0.25)
    assert parse_method("fastv").dpvr_config().fastv_k == 2  # FastV's default


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("dpvr:x", "unknown method 'dpvr'"),
    ("adapter", "adapter needs a folder"),
    ("adapter:", "adapter needs a folder"),
    ("vanilla:k=1", "vanilla takes no options"),
    ("vtw", "vtw needs its withdrawal layer"),
    ("vtw:layer=3", "unknown option 'layer' for vtw"),
    ("fastv:k=two", "k='two' is not an integer"),
    ("fastv:k=0", "k=0 must be >= 1"),
    ("fastv:ratio=1.5", "must lie in \\[0, 1\\]"),
    ("fastv:k=2,k=3", "given twice"),
    ("fastv:k", "'k' is not key=value"),
    ("adapter:x,fastv_k=1,bogus=2", "unknown option 'bogus' for adapter"),
    ("=vanilla", "label '' must be non-empty"),
    ("a/b=vanilla", "label 'a/b'"),
])
def test_bad_specs(text, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_method(text)
    assert "dpvr eval --help" in str(info.value)


def test_labels_must_be_unique():
    with pytest.raises(ValueError, match="share the label 'vanilla'"):
        parse_methods(["vanilla", "base"])
    assert [s.label for s in parse_methods(["vanilla", "again=base"])] == ["vanilla", "again"]


def test_lmms_eval_model_args_map_to_specs():
    from dpvr.lmms_eval_plugin.args import method_spec_from_args

    assert method_spec_from_args().kind == "vanilla"
    s = method_spec_from_args(adapter="runs/lf/adapter", fastv_k=2, fastv_ratio=0.5)
    assert (s.kind, s.path, s.options) == ("adapter", "runs/lf/adapter", {"fastv_k": 2, "fastv_ratio": 0.5})
    assert method_spec_from_args(method="vtw;k=4").options == {"k": 4}
    assert method_spec_from_args(method="fastv;k=2;ratio=0.25").options == {"k": 2, "ratio": 0.25}
    assert method_spec_from_args(method="'fastv:k=3,ratio=0.5'").options == {"k": 3, "ratio": 0.5}
    assert method_spec_from_args(method="adapter:x/adapter;fastv_k=1").options == {"fastv_k": 1}
    with pytest.raises(ValueError, match="either adapter=PATH or method=SPEC"):
        method_spec_from_args(method="vanilla", adapter="x")
    with pytest.raises(ValueError, match="pass adapter=PATH too"):
        method_spec_from_args(fastv_k=2)


def test_lmms_eval_context_places_images():
    from dpvr.lmms_eval_plugin.args import context_to_messages

    [turn] = context_to_messages("What is it?", 2)
    assert [c["type"] for c in turn["content"]] == ["image", "image", "text"]
    [turn] = context_to_messages("First <image> then <image> which?", 2)
    assert [c.get("text", c["type"]) for c in turn["content"]] == ["First", "image", "then", "image", "which?"]
    [turn] = context_to_messages("<image> stray", 0)
    assert turn["content"] == [{"type": "text", "text": "stray"}]
