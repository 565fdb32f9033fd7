"""Adapter manifest: hand edits, swapped or non-finite weights and newer formats are refused; saves are crash-safe."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

import dpvr
from dpvr import io as dio
from dpvr.adapter import CONFIG_NAME, INTEGRITY_KEY, WEIGHTS_NAME, AdapterIntegrityError, rehash_adapter
from dpvr.cli import main
from conftest import make_tiny_llava


def _saved(tmp_path, name="a", seed=0, base=None):
    base = base or make_tiny_llava()
    model = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant="lf", split=3))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.side_branch.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / name)
    return base, model, tmp_path / name


def _edit(folder, fn):
    path = folder / CONFIG_NAME
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta, indent=2))


@pytest.mark.parametrize("edit", [
    lambda m: m["dpvr_config"].update(split=4),
    lambda m: m["dpvr_config"].update(variant="pc"),
    lambda m: m["dpvr_config"].pop("variant"),
    lambda m: m["base_model"].update(name_or_path="elsewhere"),
    lambda m: m.pop(INTEGRITY_KEY),
], ids=["split", "variant", "variant-removed", "base-name", "manifest-removed"])
def test_hand_edited_config_is_refused_and_rehash_re_signs_it(tmp_path, edit):
    base, _, folder = _saved(tmp_path)
    _edit(folder, edit)
    with pytest.raises(AdapterIntegrityError, match="dpvr adapter rehash"):
        dpvr.DPVRModel.from_pretrained(base, folder)
    assert main(["adapter", "verify", str(folder)]) == 2
    rehash_adapter(folder)  # a deliberate edit, signed: loads (or fails for what it is, not for integrity)
    try:
        dpvr.DPVRModel.from_pretrained(base, folder)
    except AdapterIntegrityError:  # pragma: no cover - must not happen
        raise
    except ValueError:
        pass


def test_newer_format_asks_to_upgrade(tmp_path):
    base, _, folder = _saved(tmp_path)
    _edit(folder, lambda m: m.update(format_version=999))
    rehash_adapter(folder)  # even signed, a newer format is refused with the reason
    _edit(folder, lambda m: m.update(format_version=999))
    with pytest.raises(AdapterIntegrityError, match="newer than this dpvr.*upgrade dpvr"):
        dpvr.DPVRModel.from_pretrained(base, folder)


def test_weights_of_another_adapter_with_the_same_shapes_are_refused(tmp_path):
    base, _, a = _saved(tmp_path, "a", seed=0)
    _, _, b = _saved(tmp_path, "b", seed=1, base=base)
    (a / WEIGHTS_NAME).write_bytes((b / WEIGHTS_NAME).read_bytes())
    with pytest.raises(AdapterIntegrityError, match="not the weights file saved with"):
        dpvr.DPVRModel.from_pretrained(base, a)


def test_non_finite_weights_are_refused_even_when_signed(tmp_path):
    base, _, folder = _saved(tmp_path)
    state = load_file(str(folder / WEIGHTS_NAME))
    state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    rehash_adapter(folder)
    with pytest.raises(AdapterIntegrityError, match="non-finite"):
        dpvr.DPVRModel.from_pretrained(base, folder)
    assert main(["adapter", "verify", str(folder)]) == 2


def test_format_1_adapter_without_manifest_loads_with_one_warning(tmp_path, caplog):
    base, model, folder = _saved(tmp_path)
    _edit(folder, lambda m: (m.pop(INTEGRITY_KEY), m.update(format_version=1)))
    with caplog.at_level(logging.WARNING, logger="dpvr.adapter"):
        loaded = dpvr.DPVRModel.from_pretrained(base, folder)
    assert any("no integrity manifest" in r.message for r in caplog.records)
    for p, q in zip(loaded.side_branch.parameters(), model.side_branch.parameters()):
        assert torch.equal(p, q)
    assert main(["adapter", "verify", str(folder)]) == 0


def test_adapter_folder_has_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        _, _, folder = _saved(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / WEIGHTS_NAME).stat().st_mode) == 0o644


@pytest.mark.parametrize("step", range(4))
def test_save_interrupted_at_each_rename_keeps_a_complete_adapter(tmp_path, monkeypatch, step):
    """Each rename/exchange of the save raises in turn (and the platform exchange is off for odd steps):
    the folder loads as the complete old or the complete new adapter, and the next save leaves no leftovers."""
    base, first, folder = _saved(tmp_path)
    second = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant="lf", split=3))
    if step % 2:
        monkeypatch.setattr(dio, "exchange", lambda a, b: False)
    calls = {"n": 0}
    real_rename, real_replace, real_exchange = os.rename, os.replace, dio.exchange

    def failing(fn):
        def wrapper(*a, **k):
            calls["n"] += 1
            if calls["n"] == 1 + step // 2 + 2:  # skip the two file writes' renames
                raise OSError(5, "injected")
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(os, "rename", failing(real_rename))
    monkeypatch.setattr(os, "replace", failing(real_replace))
    if not step % 2:
        monkeypatch.setattr(dio, "exchange", failing(real_exchange))
    try:
        second.save_pretrained(folder)
        failed = False
    except OSError:
        failed = True
    monkeypatch.undo()
    loaded = dpvr.DPVRModel.from_pretrained(base, folder)
    want = first if failed else second
    for p, q in zip(loaded.side_branch.parameters(), want.side_branch.parameters()):
        assert torch.equal(p, q)
    second.save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


# --------------------------------------------------------------------------- mutation-testing survivors (issue 20)

def _resigned(folder, change):
    """The adapter's weights changed by ``change(state)`` and signed on purpose (``rehash_adapter``)."""
    state = change(load_file(str(folder / WEIGHTS_NAME)))
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    rehash_adapter(folder)


def _listed(message: str, label: str) -> list:
    import ast
    import re

    return ast.literal_eval(re.search(rf"{label} (\[.*?\])", message).group(1))


def test_signed_weights_that_do_not_fit_the_side_branch_name_three_keys(tmp_path):
    """Missing, unexpected and wrong-shape tensors are each refused in one line naming the first three."""
    base, _, folder = _saved(tmp_path, "missing")
    keys = sorted(load_file(str(folder / WEIGHTS_NAME)))
    _resigned(folder, lambda s: {k: v for k, v in s.items() if k not in keys[:4]})
    with pytest.raises(ValueError, match=r"does not match the side branch of 'lf' \(split 3, depth 1\)") as err:
        dpvr.DPVRModel.from_pretrained(base, folder)
    assert _listed(str(err.value), "missing") == keys[:3] and _listed(str(err.value), "unexpected") == []

    _, _, folder = _saved(tmp_path, "extra", base=base)
    extra = [f"side_branch.extra{i}" for i in range(4)]
    _resigned(folder, lambda s: {**s, **{k: torch.zeros(1) for k in extra}})
    with pytest.raises(ValueError, match="does not match the side branch") as err:
        dpvr.DPVRModel.from_pretrained(base, folder)
    assert _listed(str(err.value), "missing") == [] and _listed(str(err.value), "unexpected") == extra[:3]

    _, _, folder = _saved(tmp_path, "shapes", base=base)
    _resigned(folder, lambda s: {k: (torch.zeros(v.numel() + 1) if k in keys[:4] else v) for k, v in s.items()})
    with pytest.raises(ValueError, match="tensors of the wrong shape for this base") as err:
        dpvr.DPVRModel.from_pretrained(base, folder)
    listed = _listed(str(err.value), "base:")  # in the side branch's own order
    assert len(listed) == 3 and set(listed) < set(keys[:4])


def test_unreadable_missing_or_swapped_weights_say_what_to_do(tmp_path):
    base, _, folder = _saved(tmp_path, "garbage")
    (folder / WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    rehash_adapter(folder)
    with pytest.raises(ValueError, match="cannot be read .*; the adapter is corrupt, save it again"):
        dpvr.DPVRModel.from_pretrained(base, folder)
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="is missing; nothing to sign"):
        rehash_adapter(folder)
    with pytest.raises(FileNotFoundError, match="is missing; the adapter is incomplete, save it again"):
        dpvr.DPVRModel.from_pretrained(base, folder)
    _, _, a = _saved(tmp_path, "a", seed=0, base=base)
    _, _, b = _saved(tmp_path, "b", seed=1, base=base)
    (a / WEIGHTS_NAME).write_bytes((b / WEIGHTS_NAME).read_bytes())
    with pytest.raises(AdapterIntegrityError, match=f"re-sign it with `dpvr adapter rehash {a}`"):
        dpvr.DPVRModel.from_pretrained(base, a)


def test_non_finite_refusal_names_the_first_tensor_and_rehash_writes_the_current_format(tmp_path):
    from dpvr.adapter import FORMAT_VERSION

    base, _, folder = _saved(tmp_path)
    first = sorted(load_file(str(folder / WEIGHTS_NAME)))[0]
    _resigned(folder, lambda s: {k: (torch.full_like(v, float("inf")) if k == first else v) for k, v in s.items()})
    with pytest.raises(AdapterIntegrityError, match=rf"non-finite values \(NaN/inf, first in {first}\); the adapter is "
                                                   r"unusable \(a diverged training or a corrupt file\)"):
        dpvr.DPVRModel.from_pretrained(base, folder)
    _edit(folder, lambda m: m.pop("format_version"))
    rehash_adapter(folder)
    assert json.loads((folder / CONFIG_NAME).read_text())["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize("version", [True, 0, "2"])
def test_a_format_version_that_is_not_a_positive_integer_is_named(tmp_path, version):
    base, _, folder = _saved(tmp_path)
    _edit(folder, lambda m: m.update(format_version=version))
    with pytest.raises(AdapterIntegrityError, match=rf"format_version {version!r} is not a positive integer; the "
                                                   rf"adapter is corrupt or edited, if you edited it on purpose"):
        dpvr.DPVRModel.from_pretrained(base, folder)


def test_another_base_is_refused_naming_both_fingerprints(tmp_path):
    _, _, folder = _saved(tmp_path)
    other = make_tiny_llava(vocab=80)
    with pytest.raises(ValueError, match=r"was made for a different base model \(another model\): .*adapter has \d+, "
                                         r"base has \d+.*\. Load the base it was trained on") as err:
        dpvr.DPVRModel.from_pretrained(other, folder)
    assert "adapter has None" not in str(err.value)


def test_saved_config_and_base_fingerprint_have_exactly_the_documented_fields(tmp_path):
    """dpvr_config.json is a contract (the vLLM plugin and older/newer dpvr read it): its keys, exactly."""
    from dpvr.adapter import base_fingerprint

    base, model, folder = _saved(tmp_path)
    meta = json.loads((folder / CONFIG_NAME).read_text())
    assert set(meta) == {"format_version", "dpvr_version", "dpvr_config", "base_model", "num_parameters", INTEGRITY_KEY}
    assert meta["dpvr_version"] == dpvr.__version__
    assert meta["num_parameters"] == sum(p.numel() for p in model.side_branch.parameters())
    assert set(meta["base_model"]) == {"name_or_path", "fingerprint"}
    fingerprint = meta["base_model"]["fingerprint"]
    assert fingerprint == base_fingerprint(base)
    assert {k: v for k, v in fingerprint.items() if k != "checksum"} == {
        "architecture": "LlavaForConditionalGeneration", "model_type": "llava", "num_hidden_layers": 6,
        "hidden_size": 32, "vocab_size": 64, "image_token_id": 3}


def test_base_checksum_reads_the_first_256_values_of_layer_0_and_of_the_last_layer():
    from dpvr.adapter import base_fingerprint
    from dpvr.engine.backbone import backbone_of

    base = make_tiny_llava()
    bb = backbone_of(base)
    before = base_fingerprint(base)["checksum"]

    def changed(weight, index: int) -> bool:
        flat = weight.data.view(-1)
        old = flat[index].item()
        flat[index] = old + 1.0
        try:
            return base_fingerprint(base)["checksum"] != before
        finally:
            flat[index] = old

    assert changed(bb.layers[0].self_attn.q_proj.weight, 0)
    assert changed(bb.layers[-1].mlp.down_proj.weight, 0)
    embed = bb.model.get_input_embeddings().weight
    assert changed(embed, 255) and not changed(embed, 256)
    assert base_fingerprint(base)["checksum"] == before


def test_config_digest_is_stable_canonical_json():
    """Signatures written by this format stay valid: the canonical JSON (sorted, compact) must not change."""
    from dpvr.adapter import config_digest

    meta = {"format_version": 2, "dpvr_config": {"variant": "lf", "split": 3}, "x": [1.5, None, "é"]}
    assert config_digest(meta) == "7cb1826df56a6e216d6c1d72af206230fe2f0b5835add1428ffa67a2865b7658"
    assert config_digest({**meta, INTEGRITY_KEY: {"anything": 1}}) == config_digest(meta)


def test_save_makes_missing_parent_folders_and_writes_the_manifest_and_pt_metadata(tmp_path):
    import hashlib

    from safetensors import safe_open

    base, model, _ = _saved(tmp_path)
    folder = tmp_path / "deep" / "er" / "adapter"
    model.save_pretrained(folder)
    with safe_open(str(folder / WEIGHTS_NAME), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}  # what transformers/peft loaders expect of a torch file
    data = (folder / WEIGHTS_NAME).read_bytes()
    manifest = json.loads((folder / CONFIG_NAME).read_text())[INTEGRITY_KEY]
    assert manifest["files"] == {WEIGHTS_NAME: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
    assert set(manifest) == {"files", "config_sha256"}
    assert not [p.name for p in folder.parent.iterdir() if p.name != "adapter"]  # no staging left beside it
