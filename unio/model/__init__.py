"""The unified encoder-decoder: :class:`UnioConfig` and :class:`UnioForConditionalGeneration`."""
from .configuration_unio import PRESETS, UnioConfig, check_vocab
from .modeling_unio import UnioEncoderOutput, UnioForConditionalGeneration, UnioPreTrainedModel, shift_tokens_right

__all__ = ["UnioConfig", "UnioForConditionalGeneration", "UnioPreTrainedModel", "UnioEncoderOutput", "PRESETS",
           "check_vocab", "shift_tokens_right"]
