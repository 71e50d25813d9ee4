"""The Defender: a Qwen2.5-VL vision-language model, tiny (built from a config) or a real checkpoint.

One code path for both: `Defender.from_pretrained(folder)` goes through transformers' Auto classes.
"""

from aot.defender.build import TinyDefenderConfig, build_tiny_defender
from aot.defender.model import Defender
from aot.defender.tokenizer import CHAT_TEMPLATE, build_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "Defender",
    "TinyDefenderConfig",
    "build_tiny_defender",
    "build_tokenizer",
]
