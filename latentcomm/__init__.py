"""latentcomm: LLM2Vec-Gen generative embeddings as a latent communication channel between LLM agents.

The core (this package and ``latentcomm.protocols``) imports neither Ray nor DeepSpeed.
"""
from latentcomm.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from latentcomm.config import HeadConfig
from latentcomm.errors import HeadMismatchError, LatentcommError, LatentError
from latentcomm.latent import Latent
from latentcomm.model import GenerativeEmbedder, LossOutput, load_embedder

__all__ = ["DEFAULT_BACKBONE", "Backbone", "GenerativeEmbedder", "HeadConfig", "HeadMismatchError", "Latent",
           "LatentError", "LatentcommError", "LossOutput", "load_backbone", "load_embedder"]
__version__ = "0.1.0"
