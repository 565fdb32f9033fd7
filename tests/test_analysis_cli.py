"""`dpvr analyze` end to end: a saved tiny LLaVA + processor, LLaVA conversation JSON and images."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import IMAGE_TOKEN_ID, make_tiny_llava, num_image_tokens

from dpvr.analysis import transition_layer
from dpvr.analysis.data import encode_record
from dpvr.analysis.transitions import suggest_split
from dpvr.cli import main

WORDS = ["USER", "ASSISTANT", ":", "?", ".", "what", "color", "is", "the", "shape", "red", "blue", "a",
         "circle", "square", "how", "many", "two", "three", "describe", "image", "it", "yes", "no"]
# Vicuna-style template without {% generation %} markers: answers are found by rendering prefixes.
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_processor(image_size: int, patch: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<image>": IMAGE_TOKEN_ID, "<unk>": 4}
    vocab.update({w: 5 + i for i, w in enumerate(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    fast.chat_template = TEMPLATE
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=image_size, do_center_crop=True)
    return LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=TEMPLATE, image_token="<image>")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("analyze")
    model = make_tiny_llava(num_layers=6)
    model.save_pretrained(root / "model")
    processor = make_processor(model.config.vision_config.image_size, model.config.vision_config.patch_size)
    processor.save_pretrained(root / "model")
    (root / "data" / "images").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    records = []
    for i in range(6):
        pixels = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "data" / "images" / f"{i}.png")
        conv = [{"from": "human", "value": "<image>\nwhat color is the shape ?"}, {"from": "gpt", "value": "red"}]
        if i % 3 == 0:  # multi-turn
            conv += [{"from": "human", "value": "how many ?"}, {"from": "gpt", "value": "two ."}]
        records.append({"id": f"s{i}", "image": f"images/{i}.png", "conversations": conv})
    records.append({"id": "text-only", "conversations": [{"from": "human", "value": "describe it"},
                                                         {"from": "gpt", "value": "no"}]})
    (root / "data" / "train.json").write_text(json.dumps(records))
    return root, model, processor, records


def test_encode_record_marks_answer_positions(workspace):
    root, model, processor, records = workspace
    enc = encode_record(records[0], processor, root / "data", IMAGE_TOKEN_ID)
    ids, mask = enc["input_ids"], enc["answer_mask"]
    assert int((ids == IMAGE_TOKEN_ID).sum()) == num_image_tokens(model)
    assert enc["pixel_values"].shape == (1, 3, 16, 16)
    tok = processor.tokenizer
    predicted = [tok.convert_ids_to_tokens(int(ids[p + 1])) for p in mask.nonzero().flatten()]
    assert predicted == ["red", "</s>", "two", ".", "</s>"]


def test_cli_writes_json_and_png(workspace, tmp_path, capsys):
    root, *_ = workspace
    out = tmp_path / "out"
    rc = main(["analyze", "--model", str(root / "model"), "--data", str(root / "data" / "train.json"),
               "--num-samples", "10", "--batch-size", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "saturation.json").read_text())
    assert f"Suggested split: {data['suggested_split']}" in printed
    assert (out / "saturation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["saturation.json", "saturation.png"]  # no temp files left
    assert data["num_layers"] == 6 and 3 <= data["suggested_split"] <= 4
    assert data["samples"]["used"] == 6 and data["samples"]["skipped_text_only"] == 1
    for key in ("cosine_image", "cosine_text", "kl_image", "kl_text", "attn_text_to_image"):
        assert len(data["statistics"][key]["mean"]) == 6 and key in data["transitions"]
    assert data["statistics"]["kl_text"]["mean"][-1] == 0.0
    assert data["settings"]["num_samples"] == 10 and data["settings"]["attn_implementation"] == "sdpa"


def test_cli_adapter_mechanism_checks(workspace, tmp_path, capsys):
    import dpvr

    root, model, *_ = workspace
    adapter = tmp_path / "adapter"
    dpvr.get_dpvr_model(model, dpvr.DPVRConfig(variant="lf", split=3)).save_pretrained(adapter)
    out = tmp_path / "out"
    rc = main(["analyze", "--model", str(root / "model"), "--data", str(root / "data" / "train.json"),
               "--num-samples", "4", "--out", str(out), "--adapter", str(adapter), "--quiet", "--no-plot"])
    assert rc == 0
    assert "Mechanism checks" in capsys.readouterr().out
    mech = json.loads((out / "saturation.json").read_text())["mechanism"]
    assert mech["split"] == 3 and mech["fusion_layers"] == [5]
    assert mech["shallow_cosine"]["max_abs_diff"] == [0.0, 0.0, 0.0]  # shared shallow stack: identical
    assert all(m > 1 - 1e-5 for m in mech["shallow_cosine"]["min"])
    r, v = mech["fusion_attention"]["routed"]["mean"][0], mech["fusion_attention"]["vanilla"]["mean"][0]
    assert 0 <= r <= 1 and 0 <= v <= 1


@pytest.mark.parametrize("case, message", [
    ("missing-image", "not found"),
    ("text-only", "no usable samples"),
    ("not-llava", "no backbone adapter for model type 'llama'; supported: gemma3, idefics3, internvl, llava"),
    ("missing-data", "not found"),
])
def test_cli_bad_input_is_one_clear_line(workspace, tmp_path, capsys, case, message):
    root, *_ = workspace
    data = root / "data" / "train.json"
    model = root / "model"
    if case == "missing-image":
        data = tmp_path / "d.json"
        data.write_text(json.dumps([{"id": "x", "image": "nope.png",
                                     "conversations": [{"from": "human", "value": "<image>\nwhat ?"},
                                                       {"from": "gpt", "value": "red"}]}]))
        (tmp_path / "nope.png").unlink(missing_ok=True)
    elif case == "text-only":
        data = tmp_path / "d.json"
        data.write_text(json.dumps([{"id": "t", "conversations": [{"from": "human", "value": "what ?"},
                                                                  {"from": "gpt", "value": "red"}]}]))
    elif case == "not-llava":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = tmp_path / "llama"
        LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1)).save_pretrained(model)
    elif case == "missing-data":
        data = tmp_path / "absent.json"
    out = tmp_path / "out"
    capsys.readouterr()  # drop what building the inputs printed
    rc = main(["analyze", "--model", str(model), "--data", str(data), "--image-folder", str(root / "data")
               if case != "missing-image" else str(tmp_path), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("dpvr analyze: error:")]
    assert rc == 2 and len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not (out / "saturation.json").exists()


def test_transition_layer_definitions():
    rise = [0.2, 0.5, 0.9, 0.97, 0.99, 0.98, 0.6]  # saturating cosine with a last-layer dip
    t = transition_layer(rise, "rise", 0.9)
    assert t["layer"] == 3 and t["end_layer"] == 4  # 0.2 + 0.9 * (0.99 - 0.2) = 0.911
    fall = [4.0, 3.0, 2.0, 1.0, 0.3, 0.0]
    assert transition_layer(fall, "fall", 0.9)["layer"] == 4
    assert transition_layer(fall, "fall", 0.5)["layer"] == 2
    attn = [0.3, 0.5, 0.4, 0.1, 0.05, 0.04, 0.06]
    t = transition_layer(attn, "collapse", 0.9)
    assert (t["start_layer"], t["layer"], t["end_layer"]) == (1, 4, 5)  # 0.5 - 0.9 * (0.5 - 0.04) = 0.086
    assert transition_layer([0.1, 0.2, 0.3], "collapse")["layer"] is None  # peak at the end: no collapse
    assert transition_layer([0.7, 0.72, 0.69, 0.7], "collapse")["layer"] is None  # a wiggle is no collapse
    assert transition_layer([0.7, 0.72, 0.69, 0.7], "collapse", min_drop=0.01)["layer"] == 2
    assert transition_layer([None, None], "rise")["layer"] is None
    with pytest.raises(ValueError, match="share"):
        transition_layer(rise, "rise", 0.0)


def test_suggest_split_follows_the_window_and_stays_in_the_deep_half():
    def tr(cos, attn, kl):
        return {"cosine_image": {"layer": cos, "share": 0.9}, "attn_text_to_image": {"layer": attn, "share": 0.9},
                "kl_image": {"layer": kl, "share": 0.9}}

    assert suggest_split(tr(12, 16, 21), 32)[0] == 16  # after collapse and saturation, before the KL transition
    assert suggest_split(tr(20, 14, 18), 32)[0] == 20  # empty window: the later bound
    s, text, _ = suggest_split(tr(3, 5, 9), 32)
    assert s == 16 and "deep-half" in text  # raised to the deep half
    assert suggest_split(tr(31, 31, 31), 32)[0] == 30  # at least one text-only layer before fusion
    assert suggest_split(tr(31, 31, 31), 32, num_fusion_layers=2)[0] == 29
    assert suggest_split(tr(3, 5, 9), 32, min_split=4)[0] == 5


def test_cli_default_model_is_the_embedded_checkpoint(workspace, tmp_path):
    """Without --model the embedded tiny LLaVA is analysed (here on this file's small data set)."""
    embedded = pytest.importorskip("dpvr.embedded")
    try:
        embedded.checkpoint_path()
    except FileNotFoundError:
        pytest.skip("the embedded checkpoint is not built in this checkout")
    root, *_ = workspace
    out = tmp_path / "out"
    rc = main(["analyze", "--data", str(root / "data" / "train.json"), "--num-samples", "3",
               "--out", str(out), "--quiet", "--no-plot"])
    assert rc == 0
    data = json.loads((out / "saturation.json").read_text())
    assert data["settings"]["model"] == "dpvr.embedded"
    n = data["num_layers"]
    assert n >= 8 and -(-n // 2) <= data["suggested_split"] <= n - 2


def test_load_records_json_and_jsonl(tmp_path):
    from dpvr.analysis.data import load_records

    recs = [{"id": i, "conversations": [{"from": "human", "value": "hi"}]} for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert load_records(tmp_path / "a.json") == load_records(tmp_path / "a.jsonl") == recs
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_records(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(ValueError, match="JSON list"):
        load_records(tmp_path / "obj.json")
