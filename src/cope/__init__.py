"""cope: video language models that read video through its codec (CoPE-VideoLM)."""

__version__ = "0.1.0"
