"""Data: stage-1 frame pairs, stage-2 instruction data, the preprocessing cache."""
