//! Rotary position embeddings (rotate_half / NeoX style).
