"""Analytic FLOPs model, exact: every term of decode, the sliding-window caps, the side branch's windows, the
report's rows and files — each count written out by hand on a tiny made-up shape (tests/test_flops.py checks the
SPEC's closed forms and the 7B reference; these pin what mutation testing found unchecked:
docs/results/mutation/flops.md)."""

from __future__ import annotations

import numpy as np
import pytest

from dpvr.config import DPVRConfig
from dpvr.efficiency.flops import (
    ShapeDims, _side_start, analytic_report, attention_pairs, cache_lengths, compare, decode_flops, decode_layer_flops,
    format_table, kv_cache_bytes, layer_flops, prefill_flops,
)
from dpvr.efficiency.methods import LayerWork, Method, make_methods, prompt_mask, schedule
from dpvr.shapes import load_shape_config
from dpvr.shapes.layout import prompt_layout

D, WQ, WKV, DFF, VOCAB = 8, 12, 4, 16, 10  # hidden != q width != kv width: every term distinguishable
SYSTEM, IMAGE, TEXT = 3, 3, 4  # prompt: 3 system, 3 image, 4 text tokens


@pytest.fixture
def dims():
    """4 layers; layers 2 and 3 slide over 5 keys (0 = full attention)."""
    return ShapeDims(name="t", num_layers=4, hidden=D, intermediate=DFF, q_width=WQ, kv_width=WKV, vocab=VOCAB,
                     image_tokens=IMAGE, vision_per_image=1000, windows=(0, 0, 5, 5))


def full_attention(d: ShapeDims) -> ShapeDims:
    return ShapeDims(**{**d.__dict__, "windows": ()})


VANILLA = Method("vanilla", DPVRConfig(variant="vanilla"))
PROJ = 2 * (2 * D * WQ + 3 * D * DFF) + 2 * (2 * D * WKV)  # one decode token's projections + MLP in one layer


def test_one_decode_layer_term_by_term(dims):
    assert decode_layer_flops(10, dims) == PROJ + 4 * WQ * 11  # 10 cached keys + itself
    assert decode_layer_flops(10, dims, window=5) == PROJ + 4 * WQ * 5  # capped at the window
    assert decode_layer_flops(3, dims, window=5) == PROJ + 4 * WQ * 4  # under the cap


def test_cache_lengths_keep_window_minus_one_in_sliding_layers(dims):
    mask = prompt_mask(SYSTEM, IMAGE, TEXT)  # 10 positions
    assert cache_lengths(dims, VANILLA, mask) == [10, 10, 4, 4]
    lf = Method("lf", DPVRConfig(variant="lf", split=1))  # deep layers 1..3: text, text, fuse
    assert cache_lengths(dims, lf, mask) == [10, 7, 4, 4]
    assert kv_cache_bytes(dims, lf, mask) == (10 + 7 + 4 + 4) * 2 * WKV * 2
    assert kv_cache_bytes(dims, lf, mask, batch=3, dtype_bytes=4) == 3 * (10 + 7 + 4 + 4) * 2 * WKV * 4


def reference_decode(lengths: list[int], windows: tuple[int, ...], new_tokens: int, batch: int) -> float:
    """Step j attends to the layer's cached positions, j earlier new tokens and itself, capped by the window."""
    total = 0
    for j in range(new_tokens):
        for i, n in enumerate(lengths):
            keys = n + j + 1
            w = windows[i] if windows else 0
            total += PROJ + 4 * WQ * (min(keys, w) if w else keys)
    return batch * (total / new_tokens + 2 * D * VOCAB)


@pytest.mark.parametrize("new_tokens, batch", [(1, 1), (5, 1), (5, 3)])
@pytest.mark.parametrize("sliding", [True, False], ids=["sliding", "full"])
def test_decode_per_token_step_by_step(dims, new_tokens, batch, sliding):
    d = dims if sliding else full_attention(dims)
    mask = prompt_mask(SYSTEM, IMAGE, TEXT)
    for m in (VANILLA, Method("lf", DPVRConfig(variant="lf", split=1))):
        expected = reference_decode(cache_lengths(d, m, mask), d.windows, new_tokens, batch)
        assert decode_flops(d, m, mask, new_tokens=new_tokens, batch=batch) == pytest.approx(expected, rel=1e-12)
    assert decode_flops(d, VANILLA, mask) == reference_decode(cache_lengths(d, VANILLA, mask), d.windows, 1, 1)
    with pytest.raises(ValueError, match="new_tokens must be >= 1, got 0"):
        decode_flops(d, VANILLA, mask, new_tokens=0)


def test_attention_pairs_skip_a_block_without_keys_but_count_the_next():
    groups = np.array([0, 0, 1, 1, -1, -1])  # two bidirectional blocks, then two plain tokens
    work = LayerWork(queries=np.ones(6, bool), keys=np.array([0, 0, 1, 1, 1, 1], bool), kv_proj=np.ones(6, bool))
    # causal: keys seen up to each query 0,0,1,2,3,4 = 10; block 0 has no keys; in block 1 query 2 also sees key 3
    assert attention_pairs(work) == 10
    assert attention_pairs(work, groups=groups) == 11
    assert attention_pairs(work, window=2, groups=groups) == 0 + 0 + 1 + 2 + 2 + 2 + 1


def test_prefill_lm_head_vision_and_bidirectional_blocks(dims):
    mask = prompt_mask(SYSTEM, IMAGE, TEXT, num_images=2)  # 13 positions, 2 images
    groups = np.array([-1] * SYSTEM + [0] * IMAGE + [1] * IMAGE + [-1] * TEXT)
    plain = prefill_flops(dims, VANILLA, mask)
    assert plain["lm_head"] == 2 * 1 * D * VOCAB  # the last prompt position only
    assert prefill_flops(dims, VANILLA, mask, lm_head_positions="all")["lm_head"] == 2 * 13 * D * VOCAB
    assert plain["vision"] == 2 * 1000 and isinstance(plain["vision"], int)
    assert plain["whole"] == plain["lm"] + plain["vision"] + plain["lm_head"]
    # each image token also sees the later tokens of its own image: 2 + 1 + 0 more pairs per image, every layer
    both = prefill_flops(dims, VANILLA, mask, groups=groups)
    assert both["decoder"] - plain["decoder"] == 4 * (4 * WQ * 2 * 3)
    with pytest.raises(ValueError, match="lm_head_positions must be 'last' or 'all', got 'ALL'"):
        prefill_flops(dims, VANILLA, mask, lm_head_positions="ALL")


def test_side_branch_layers_keep_the_windows_of_the_layers_they_copy(dims):
    mask = prompt_mask(SYSTEM, IMAGE, TEXT)
    lf = Method("lf", DPVRConfig(variant="lf", split=1, side_depth=2))  # copies layers 1 (full) and 2 (window 5)
    assert _side_start(lf, 4) == 1
    side = schedule(lf, mask, 4).side
    expected = layer_flops(side[0], dims, 0) + layer_flops(side[1], dims, 5)
    assert expected != layer_flops(side[0], dims) + layer_flops(side[1], dims)  # the window matters here
    assert prefill_flops(dims, lf, mask)["side_branch"] == expected
    groups = np.array([-1] * SYSTEM + [0] * IMAGE + [-1] * TEXT)
    assert prefill_flops(dims, lf, mask, groups=groups)["side_branch"] == expected + 2 * (4 * WQ * 3)


def test_side_start_of_methods_without_a_split():
    assert _side_start(Method("vanilla"), 4) == 0  # no config
    assert _side_start(Method("fastv", DPVRConfig(variant="fastv"), {"k": 2, "ratio": 0.5}), 4) == 0  # a peer
    assert _side_start(Method("lf", DPVRConfig(variant="lf", split=3)), 4) == 3


def test_layer_flops_default_window_is_full_attention(dims):
    work = schedule(VANILLA, prompt_mask(SYSTEM, IMAGE, TEXT), 4).layers[0]
    assert layer_flops(work, dims) == layer_flops(work, dims, 0) == 10 * (2 * (2 * D * WQ + 3 * D * DFF)
                                                                          + 2 * (2 * D * WKV)) + 4 * WQ * 55


def test_shape_dims_from_configs():
    gemma = ShapeDims.from_config(load_shape_config("gemma-3-4b"))
    assert (gemma.hidden, gemma.q_width, gemma.kv_width) == (2560, 8 * 256, 4 * 256)  # its own head_dim, not 2560/8
    assert gemma.family == "gemma3" and gemma.name == "gemma-3-4b" and gemma.windows[5] == 0 and gemma.windows[0] > 0
    qwen = load_shape_config("qwen2.5-vl-7b")
    assert ShapeDims.from_config(qwen).family == "qwen2_5_vl"
    assert ShapeDims.from_config(qwen).windows == ()  # every layer "full_attention": no windows, not (0, 0, ...)
    from dpvr.efficiency.vision import vision_flops

    assert ShapeDims.from_config(qwen).vision_per_image == vision_flops(qwen, prompt_layout(qwen)) > 0
    tiny = load_shape_config("tiny")
    dims = ShapeDims.from_config(tiny)
    assert dims.windows == () and isinstance(dims.q_width, int) and dims.name == "tiny"
    tiny.name_or_path = ""
    assert ShapeDims.from_config(tiny).name == "custom"


ROW_KEYS = {"method", "label", "text_tokens", "system_tokens", "image_tokens", "visual_share", "prompt_tokens", "batch",
            "prefill_lm", "prefill_side_branch", "prefill_vision", "prefill_lm_head", "prefill_whole",
            "decode_per_token", "kv_cache_bytes", "prefill_lm_ratio", "prefill_whole_ratio", "decode_per_token_ratio",
            "kv_cache_bytes_ratio", "saving_lm", "saving_whole"}


def test_compare_rows_are_the_direct_counts(dims):
    methods = make_methods(["lf", "pc"], 4, split=2)
    with pytest.raises(ValueError, match=r"methods must start with 'vanilla' \(the reference every ratio"):
        compare(dims, [])
    default = compare(dims, methods, text_tokens=[TEXT], system_tokens=SYSTEM)
    mask = prompt_mask(SYSTEM, IMAGE, TEXT)
    for row, m in zip(default, methods):
        assert set(row) == ROW_KEYS and row["batch"] == 1
        assert row["decode_per_token"] == decode_flops(dims, m, mask)
        assert row["kv_cache_bytes"] == kv_cache_bytes(dims, m, mask)
    rows = compare(dims, methods, text_tokens=[TEXT, 7], system_tokens=SYSTEM, num_images=2, batch=2, new_tokens=3,
                   dtype_bytes=4)
    assert len(rows) == 2 * len(methods)
    for i, row in enumerate(rows):
        m, t = methods[i % len(methods)], [TEXT, 7][i // len(methods)]
        mask = prompt_mask(SYSTEM, IMAGE, t, num_images=2)
        pre = prefill_flops(dims, m, mask, batch=2)
        assert (row["method"], row["label"], row["text_tokens"], row["system_tokens"]) == (m.name, m.label, t, SYSTEM)
        assert (row["image_tokens"], row["prompt_tokens"], row["batch"]) == (2 * IMAGE, len(mask), 2)
        assert row["visual_share"] == 2 * IMAGE / len(mask)
        assert (row["prefill_lm"], row["prefill_side_branch"], row["prefill_vision"], row["prefill_lm_head"],
                row["prefill_whole"]) == (pre["lm"], pre["side_branch"], pre["vision"], pre["lm_head"], pre["whole"])
        assert row["decode_per_token"] == decode_flops(dims, m, mask, 3, 2)
        assert row["kv_cache_bytes"] == kv_cache_bytes(dims, m, mask, 2, 4)
        ref = rows[(i // len(methods)) * len(methods)]
        assert row["saving_lm"] == 1 - row["prefill_lm"] / ref["prefill_lm"]


def test_compare_with_a_family_layout_uses_its_blocks_and_vision():
    config = load_shape_config("gemma-3-4b")
    layout = prompt_layout(config)
    dims = ShapeDims.from_config(config, layout)
    methods = make_methods(["lf"], dims.num_layers, split=12)
    (van, lf) = compare(dims, methods, text_tokens=[64], layout=layout)
    assert layout.groups(64) is not None and van["system_tokens"] == layout.system_tokens
    pre = prefill_flops(dims, methods[1], layout.mask(64), groups=layout.groups(64), vision=dims.vision_per_image)
    assert (lf["prefill_lm"], lf["prefill_vision"]) == (pre["lm"], dims.vision_per_image)


def test_format_table_character_for_character():
    row = {"text_tokens": 128, "label": "lf(s=18,K=1,D=1)", "prefill_lm": 2.5e12, "saving_lm": 0.291,
           "prefill_whole": 3.25e12, "saving_whole": 0.2, "decode_per_token": 1.35e10, "decode_per_token_ratio": 0.875,
           "kv_cache_bytes": 300 * 2**20, "kv_cache_bytes_ratio": 0.5}
    head = (" text method                        LM TFLOP  LM save whole TFLOP whole save decode GF/tok dec ratio "
            "  KV MiB KV ratio")
    assert format_table([row]).splitlines() == [
        head, "-" * len(head),
        "  128 lf(s=18,K=1,D=1)                 2.500    29.1%       3.250      20.0%         13.50     0.875    300.0"
        "    0.500",
    ]


def test_analytic_report_file_contents(dims):
    methods = make_methods(["lf", "fastv"], 4, split=2)
    report = analytic_report(dims, methods, text_tokens=[TEXT], system_tokens=SYSTEM)
    assert set(report) == {"shape", "methods", "settings", "layout", "convention", "rows"}
    assert report["shape"]["windows"] == (0, 0, 5, 5) and report["shape"]["name"] == "t"
    assert report["methods"][0] == {"name": "vanilla", "label": "vanilla", "dpvr": methods[0].dpvr.to_dict(),
                                    "options": {}}
    assert report["methods"][2]["options"] == {"k": 2, "ratio": 0.5}
    assert report["settings"] == {"text_tokens": [TEXT], "system_tokens": SYSTEM} and report["layout"] is None
    assert report["convention"] == ("2 FLOPs per multiply-add; projections+MLP+causal attention pairs; "
                                    "LM = decoder + side branch; whole = LM + vision tower + projector + lm_head")
    assert report["rows"] == compare(dims, methods, text_tokens=[TEXT], system_tokens=SYSTEM)
    config = load_shape_config("tiny")
    layout = prompt_layout(config)
    with_layout = analytic_report(ShapeDims.from_config(config, layout), make_methods(["lf"], 4, split=2),
                                  text_tokens=[TEXT], layout=layout)
    assert "layout" not in with_layout["settings"] and with_layout["layout"]["system_tokens"] == layout.system_tokens
