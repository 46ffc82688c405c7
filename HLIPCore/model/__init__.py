"""HLIP model: hierarchical-attention ViT for studies, HF BERT text tower, CLIP wrapper, checkpoints."""
from .clip import HLIPModel, HLIPVisual  # noqa: F401
from .factory import create_model, create_model_and_tokenizer, create_tokenizer, get_model_config, list_configs  # noqa: F401
from .vision import HLIPVisionTransformer, LEVELS, parse_layout  # noqa: F401
