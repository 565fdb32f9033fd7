"""Plot titles name models without machine paths."""

from __future__ import annotations

from dpvr import embedded
from dpvr.analysis.plot import model_name


def test_model_names_in_titles(tmp_path):
    assert model_name(str(embedded.PATH)) == "the embedded tiny LLaVA"
    assert model_name(str(tmp_path / "runs" / "my-llava")) == "my-llava"
    assert model_name("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    assert model_name("") == ""
