"""The bundled small-LM trainer: pretrain, fine-tune, evaluate (imports torch)."""
