"""Models: the Δ-encoder, its pre-training heads, the CoPE VideoLM, and the shared vision path."""
