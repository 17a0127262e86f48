//! LFM2 (Liquid AI) hybrid language model, mirroring transformers `Lfm2ForCausalLM`.
