"""dpvr: modality-asymmetric token routing (DPVR) for LLaVA-style multimodal LLMs.

Wrap a stock ``transformers`` LLaVA model so that its deep layers skip the image tokens::

    from transformers import LlavaForConditionalGeneration
    import dpvr

    base = LlavaForConditionalGeneration.from_pretrained(path)
    model = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant="lf", split=18))
    model.print_trainable_parameters()
"""

__version__ = "0.1.0"

from dpvr.config import DPVRConfig  # noqa: E402
from dpvr.engine.cache import DPVRCache  # noqa: E402
from dpvr.model import DPVRModel, get_dpvr_model  # noqa: E402

__all__ = ["DPVRCache", "DPVRConfig", "DPVRModel", "get_dpvr_model", "__version__"]
