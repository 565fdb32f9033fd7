"""`dpvr train`, `dpvr eval`, `dpvr analyze` on a saved tiny model of every supported family but LLaVA-1.5
(which `tests/test_train.py`, `test_eval_cli.py` and `test_analysis_cli.py` cover).

The training data goes through the family's processor (grid-dependent image token counts, image
spans wrapped in text tokens), labels are the assistant responses only, and every processor output
(``image_grid_thw``, ``mm_token_type_ids``, ``token_type_ids``, ``pixel_attention_mask``, ...)
reaches the model; the commands run end to end and write their outputs.
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import pytest
import torch

from family_dirs import (TOOL_FAMILIES, build_family, build_llava_next, build_llava_onevision, build_qwen2_vl,
                         family_tokenizer)

BUILDERS = {"qwen2_vl": build_qwen2_vl, "llava_next": build_llava_next, "llava_onevision": build_llava_onevision,
            **{name: functools.partial(build_family, name) for name in TOOL_FAMILIES}}


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return build_qwen2_vl(tmp_path_factory.mktemp("qwen2vl"))


@pytest.fixture(scope="module", params=list(BUILDERS))
def family_dir(request, tmp_path_factory, qwen_dir) -> Path:
    if request.param == "qwen2_vl":
        return qwen_dir
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    from dpvr.loading import load_model

    model, processor, _ = load_model(qwen_dir / "model", dtype="float32", device="cpu")
    return model, processor


def _dataset(qwen_dir, processor, model, records):
    from dpvr.backbones import adapter_for
    from dpvr.train.family_data import ProcessorConversationDataset

    return ProcessorConversationDataset(records, qwen_dir / "data", processor, adapter_for(model).all_visual_ids())


def test_labels_are_the_answers_and_images_expand_by_their_grid(qwen_dir, qwen, tmp_path):
    from PIL import Image

    from dpvr.data.llava_format import IGNORE_INDEX
    from dpvr.train.family_data import FamilyDataCollator

    model, processor = qwen
    tok = processor.tokenizer
    Image.new("RGB", (64, 40), (200, 30, 30)).save(qwen_dir / "data" / "wide.png")  # another grid than 64x64
    records = [
        {"id": "m", "image": "wide.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the circle?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "How many shapes?"}, {"from": "gpt", "value": "2"}]},
        json.loads((qwen_dir / "data" / "train.json").read_text())[0],
        {"id": "t", "conversations": [{"from": "human", "value": "Say yes."}, {"from": "gpt", "value": "Yes"}]},
    ]
    ds = _dataset(qwen_dir, processor, model, records)
    item = ds[0]
    learned = [int(i) for i, lab in zip(item["input_ids"], item["labels"]) if lab != IGNORE_INDEX]
    assert tok.decode(learned) == "red<|im_end|>\n2<|im_end|>\n"
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(item["input_ids"].tolist(), item["labels"].tolist()))
    image_id = model.config.image_token_id
    t, h, w = item["image_grid_thw"][0].tolist()
    assert int((item["input_ids"] == image_id).sum()) == t * h * w // 4  # the processor's count, not a CLIP grid
    counts = [int((ds[i]["input_ids"] == image_id).sum()) for i in range(2)]
    assert counts[0] != counts[1] and counts[0] > 0

    batch = FamilyDataCollator(tok.pad_token_id)([ds[0], ds[1], ds[2]])
    assert batch["image_grid_thw"].shape == (2, 3)
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == image_id)
    # the padded batch gives each sample its own loss: the collated tensors line up with the tokens
    with torch.no_grad():
        out = model(**batch, use_cache=False)
        logits = out.logits
        singles = [model(**FamilyDataCollator(tok.pad_token_id)([ds[i]]), use_cache=False).logits[0] for i in range(3)]
    for i, single in enumerate(singles):
        torch.testing.assert_close(logits[i, : single.shape[0]], single, rtol=1e-4, atol=1e-4)


def _assistant_segments(processor, record) -> list[str]:
    """What the labels must spell: each answer and the end of its turn, as the chat template renders them."""
    from dpvr.data.llava_format import record_to_messages
    from dpvr.train.family_data import _render

    messages = record_to_messages(record)
    out = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            upto = _render(processor, messages[: i + 1], add_generation_prompt=False)
            out.append(upto[upto.rindex(m["content"][0]["text"]):])  # the answer and what closes its turn
    return out


def _routed_logits(model, processor, record, image_folder):
    from dpvr.evaluation.generation import Prompt, encode, user_turn
    from dpvr.validation import open_image

    prompt = Prompt([user_turn(record["question"])], [open_image(image_folder / record["image"], "test")])
    with torch.no_grad():
        return model(**encode(processor, [prompt]), use_cache=False).logits


def test_train_eval_analyze_run(family_dir, tmp_path):
    """Each command end to end on a family other than LLaVA-1.5, with its own processor and chat template:
    labels are exactly the assistant tokens; `train` (dpvr lf and LoRA) gives adapters that change the
    routed output and load back identically; `eval` answers as per-sample greedy generation does; `analyze`
    measures every layer."""
    from dpvr.cli import main
    from dpvr.data.llava_format import IGNORE_INDEX
    from dpvr.evaluation.generation import Prompt, generate, user_turn
    from dpvr.loading import load_model
    from dpvr.model import DPVRModel, get_dpvr_model
    from dpvr.validation import open_image

    root = family_dir
    base, processor, _ = load_model(root / "model", dtype="float32", device="cpu")
    assert base.config.model_type in BUILDERS
    visual = set(adapter_for_ids(base))
    record = json.loads((root / "data" / "train.json").read_text())[0]
    item = _dataset(root, processor, base, [record])[0]
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    learned = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ids, labels)) and not visual & set(learned)
    runs = [[t for t, _ in run] for key, run in itertools.groupby(zip(ids, labels), lambda p: p[1] != IGNORE_INDEX)
            if key]  # one run of label tokens per assistant turn
    # each run spells its answer and end of turn; a space before the answer may share the answer's first token
    assert [processor.tokenizer.decode(r).removeprefix(" ") for r in runs] == _assistant_segments(processor, record)
    assert sum(t in visual for t in ids) > 1  # expanded by the processor

    model = str(root / "model")
    data = str(root / "data" / "train.json")
    run = tmp_path / "train"
    # two fusion layers: Gemma 3's last layer is a sliding-window one (6 positions here) that cannot reach the image
    assert main(["train", "--model", model, "--data", data, "--variant", "lf", "--split", "3", "--num-fusion-layers",
                 "2", "--max-steps", "2", "--batch-size", "4", "--eval-samples", "2", "--out", str(run),
                 "--no-progress"]) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["global_steps"] == 2 and result["first_step_gradient"]["nonzero_grad_elements"] > 0
    lora = tmp_path / "lora"
    assert main(["train", "--model", model, "--data", data, "--method", "lora", "--lora-r", "4", "--max-steps", "1",
                 "--batch-size", "2", "--eval-samples", "1", "--out", str(lora), "--no-progress"]) == 0
    assert json.loads((lora / "result.json").read_text())["first_step_gradient"]["nonzero_grad_elements"] > 0

    # the trained side branch changes the routed output, and the saved adapter reproduces it exactly
    question = json.loads((root / "data" / "pope.jsonl").read_text().splitlines()[0])
    trained = DPVRModel.from_pretrained(base, run / "adapter").eval()
    again = DPVRModel.from_pretrained(base, run / "adapter").eval()
    fresh = get_dpvr_model(base, trained.dpvr_config).eval()
    out = _routed_logits(trained, processor, question, root / "data")
    assert torch.equal(out, _routed_logits(again, processor, question, root / "data"))
    assert not torch.allclose(out, _routed_logits(fresh, processor, question, root / "data"))

    ev = tmp_path / "eval"
    assert main(["eval", "--model", model, "--benchmark", str(root / "data"), "--method", "vanilla",
                 "--method", f"lf=adapter:{run / 'adapter'}", "--method", f"lora=lora:{lora / 'adapter'}",
                 "--families", "pope", "mc", "--limit", "2", "--max-new-tokens", "3", "--out", str(ev),
                 "--device", "cpu", "--quiet"]) == 0
    results = json.loads((ev / "results.json").read_text())
    assert set(results["methods"]) == {"vanilla", "lf", "lora"}
    asked = {r["id"]: r for f in ("pope", "mc") for r in map(json.loads, (root / "data" / f"{f}.jsonl").open())}
    for name, m in (("vanilla", base), ("lf", trained)):
        rows = [json.loads(r) for r in (ev / "predictions" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 4
        for row in rows:  # the batched eval answers as greedy generation of that one question
            image = open_image(root / "data" / asked[row["id"]]["image"], "test")
            prompt = Prompt([user_turn(row["question"])], [image])
            assert [row["prediction"]] == generate(m, processor, [prompt], max_new_tokens=3), (name, row["id"])

    an = tmp_path / "analyze"
    assert main(["analyze", "--model", model, "--data", data, "--num-samples", "2",
                 "--batch-size", "2", "--adapter", str(run / "adapter"), "--out", str(an), "--quiet"]) == 0
    sat = json.loads((an / "saturation.json").read_text())
    assert sat["num_layers"] == 6 and sat["samples"]["used"] == 2
    assert (an / "saturation.png").is_file()


def adapter_for_ids(model) -> list[int]:
    from dpvr.backbones import adapter_for

    return adapter_for(model).all_visual_ids()


def test_sweep_on_a_sliding_window_family(tmp_path, capsys):
    """`dpvr sweep` on Gemma 3 (sliding-window and full layers): each point trains, is evaluated by `dpvr eval`'s
    code and gets the analytic saving of its schedule at the training image's size. With one fusion layer (a
    sliding-window one, 6 positions here) no answer reaches the image, and training says so."""
    from dpvr.cli import main
    from dpvr.config import DPVRConfig
    from dpvr.efficiency.flops import ShapeDims, compare
    from dpvr.efficiency.methods import Method
    from dpvr.shapes.layout import Visual, prompt_layout
    from transformers import AutoConfig

    root = BUILDERS["gemma3"](tmp_path / "gemma3", num_train=12)
    out = tmp_path / "sweep"
    assert main(["sweep", "--grid", "split=3", "num_fusion_layers=1,2", "--variants", "lf", "--out", str(out),
                 "--model", str(root / "model"), "--data", str(root / "data" / "train.json"), "--benchmark",
                 str(root / "data"), "--families", "pope", "--limit", "2", "--max-steps", "1", "--batch-size", "2",
                 "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "although its batch has images" in said and "sliding-window" in said and "has no image" not in said
    points = {p.name: json.loads((p / "point.json").read_text()) for p in (out / "points").iterdir() if p.is_dir()}
    assert len(points) == 2 and (out / "vanilla.json").is_file()
    config = AutoConfig.from_pretrained(root / "model")
    config._dpvr_shape = {"layouts": {"image": [{"kind": "image", "height": 64, "width": 64}]}}
    dims = ShapeDims.from_config(config, prompt_layout(config, visuals=[Visual("image", 64, 64)]))
    for record in points.values():
        assert set(record["accuracy"]) >= {"pope", "overall"}
        cfg = DPVRConfig.from_dict(record["dpvr_config"])
        assert list(cfg.resolve(6).fusion_layers) == list(range(6 - record["settings"]["num_fusion_layers"], 6))
        rows = compare(dims, [Method("vanilla", DPVRConfig(variant="vanilla")), Method("lf", cfg)], text_tokens=[24],
                       system_tokens=8)
        assert record["flops_saving"] == pytest.approx(rows[-1]["saving_lm"])  # 4 image tokens: the side branch costs more
    savings = sorted(r["flops_saving"] for r in points.values())
    assert savings[0] < savings[1]  # one more fusion layer saves less


def test_family_records_are_checked_as_llava_ones(qwen_dir, qwen, tmp_path):
    """The processor path refuses what the LLaVA path refuses (`dpvr.train.data.check_record`), in one line each."""
    import re

    from dpvr.validation import BadInput

    model, processor = qwen
    turns = [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]
    bad = {
        "is absolute": {"id": "o", "image": str(tmp_path / "outside.png"), "conversations": turns},
        "outside": {"id": "u", "image": "../../outside.png", "conversations": turns},
        "2 '<image>' placeholders": {"id": "p", "image": "images/train/000000.png",
                                     "conversations": [{"from": "human", "value": "<image><image> hm"}, turns[1]]},
        "no 'image' field": {"id": "n", "conversations": turns},
    }
    for words, record in bad.items():
        with pytest.raises(BadInput, match=re.escape(words)) as err:
            _dataset(qwen_dir, processor, model, [record])
        assert "\n" not in str(err.value)


def test_pixtral_processor_without_torchvision_counts_what_it_expands():
    """`dpvr.pil_processors.PixtralProcessorPil`: rows of [IMG] ended by [IMG_BREAK], the last by [IMG_END], and the
    count it predicts from an image's size alone (used to refuse over-long records) is the count it writes."""
    from PIL import Image
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    from dpvr.pil_processors import PixtralProcessorPil

    slots, pad, eos, bos, extra, template, _ = TOOL_FAMILIES["mistral3"]
    special = [slots.get(i, f"<|unused_{i}|>") for i in range(max(slots) + 1)]
    tok = family_tokenizer(["a picture of a red circle"] * 5, special, template, pad=pad, eos=eos, bos=bos, extra=extra)
    images = PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size={"height": 8, "width": 8})
    processor = PixtralProcessorPil(images, tok, patch_size=4, spatial_merge_size=2, chat_template=template)
    step = 8
    for h, w in [(64, 64), (40, 64), (64, 24), (10, 100), (8, 8)]:
        enc = processor(images=[Image.new("RGB", (w, h))], text=["[INST][IMG]hi[/INST]"], return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        rows, cols = int(enc["pixel_values"].shape[2]) // step, int(enc["pixel_values"].shape[3]) // step
        assert (enc["image_sizes"][0] // step).tolist() == [rows, cols]
        assert ids.count(5) == rows * cols and ids.count(9) == rows - 1 and ids.count(10) == 1
        span = ids[ids.index(5): ids.index(10) + 1]
        assert span == ([5] * cols + [9]) * (rows - 1) + [5] * cols + [10]
        assert processor._get_num_multimodal_tokens(image_sizes=[(h, w)])["num_image_tokens"] == [len(span)]
