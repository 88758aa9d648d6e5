"""The model: a frozen causal LM (``backbone``) with a trainable compression head (``heads``, ``config``,
``head_file``), where inputs go in the prompt (``prompt``), the embedder that compresses, decodes, embeds and
responds (``embedder``), generation, KV hand-offs, losses, encoder LoRA, teachers and the reading instructions.
Imports no Ray, no DeepSpeed, no protocol."""
from latentcomm.model.embedder import DEFAULT_HEAD_DIR, GenerativeEmbedder, LossOutput, load_embedder

__all__ = ["DEFAULT_HEAD_DIR", "GenerativeEmbedder", "LossOutput", "load_embedder"]
