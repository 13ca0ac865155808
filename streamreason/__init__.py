"""streamreason: RL post-training for streaming video reasoning."""
