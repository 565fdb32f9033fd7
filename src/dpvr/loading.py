"""The one model loader: a model of any supported family (`dpvr.backbones`) and its own processor.

    model, processor, name = load_model("path/to/checkpoint")   # None: the embedded tiny LLaVA

Every command (train, eval, analyze, sweep, demo, the lmms-eval plugin) loads through here, so
an unsupported model type gets the same one-line message everywhere.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from dpvr.backbones import adapter_class, adapter_for


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16")
    return table[dtype]


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def load_model(model_path: str | Path | None, *, dtype: str = "auto", device: str = "auto",
               attn_implementation: str = "sdpa"):
    """Load a multimodal model of a supported family and its processor (``None``: the embedded default).

    Returns ``(model, processor, name)``; ``name`` is the path, or ``"dpvr.embedded"``.
    """
    dev = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, dev)
    name = None
    if model_path is None:
        try:
            from dpvr import embedded

            model_path, name = embedded.checkpoint_path(), "dpvr.embedded"
        except (ImportError, AttributeError, FileNotFoundError) as err:
            raise ValueError(f"no --model given and the embedded default model is not available ({err}): "
                             "pass --model PATH") from None
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = Path(model_path)
    if not path.exists() and (str(model_path).startswith((".", "/")) or str(model_path).count("/") != 1):
        raise FileNotFoundError(f"model {model_path} not found (a local directory or a hub id owner/name)")
    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"cannot load a model config from {model_path}: {str(err).splitlines()[0]}") from None
    adapter_class(getattr(config, "model_type", None))  # one message naming the type and the supported families
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch_dtype,
                                                        attn_implementation=attn_implementation)
    model.to(dev).eval()
    adapter_for(model)
    try:
        processor = AutoProcessor.from_pretrained(model_path)
    except (ImportError, ValueError) as err:  # e.g. Qwen's video processor needs torchvision; images work without it
        if isinstance(err, ValueError) and "torchvision" not in str(err):
            raise
        processor = processor_without_video(model_path, config, err)
    return model, processor, name or str(model_path)


def processor_without_video(model_path, config, err: ImportError):
    """The family's processor with its image processor and tokenizer but no video processor.

    Families whose processor has a video processor (Qwen2-VL, LLaVA-OneVision, InternVL, SmolVLM, ...)
    cannot build it without torchvision; images and text need only PIL, so dpvr evaluates and trains on
    images then. A processor whose module needs torchvision itself (Pixtral) is replaced by its PIL
    equivalent from `dpvr.pil_processors`.
    """
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    from dpvr.pil_processors import PIL_PROCESSORS

    cls = PROCESSOR_MAPPING.get(type(config), None)
    if cls is not None and cls.__name__ in PIL_PROCESSORS:
        cls = PIL_PROCESSORS[cls.__name__]
    elif cls is None or "video_processor" not in cls.get_attributes():
        raise ValueError(f"cannot load the processor of {model_path}: {str(err).strip().splitlines()[0]}") from None
    else:
        cls = _image_only(cls)
    settings, _ = cls.get_processor_dict(str(model_path))  # processor_config.json + chat template
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "image_processor", "tokenizer",
                                                                   "video_processor"}
    if "kwargs" in accepted:  # ImageOnly: the stock class's own settings (InternVL's image_seq_length, ...)
        accepted = (accepted | set(inspect.signature(cls.__mro__[1].__init__).parameters)) - {
            "self", "image_processor", "tokenizer", "video_processor", "kwargs"}
    settings = {k: v for k, v in settings.items() if k in accepted}
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    settings.setdefault("chat_template", getattr(tokenizer, "chat_template", None))
    processor = cls(image_processor=AutoImageProcessor.from_pretrained(model_path), tokenizer=tokenizer, **settings)
    if "video_processor" in cls.get_attributes():
        processor.video_processor = None
    return processor


def _image_only(cls):
    """``cls`` (a processor with a video processor) built without one; chats render through the tokenizer."""

    class ImageOnly(cls):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

        def apply_chat_template(self, conversation, chat_template=None, **kwargs):
            # some processors read video settings here (SmolVLM: num_frames); rendering text needs none
            if kwargs.get("tokenize"):
                return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)
            return self.tokenizer.apply_chat_template(conversation, chat_template=chat_template or self.chat_template,
                                                      **kwargs)

    ImageOnly.__name__ = ImageOnly.__qualname__ = cls.__name__
    return ImageOnly
