"""unio: unified sequence-to-sequence vision-language models."""
__version__ = "0.1.0"
