"""The shapes world's contrastive image-text model: a small stand-in for CLIP.

An image encoder (a small CNN) and a text encoder (a bag of word embeddings and an MLP;
the world's captions carry no meaning in their word order) map into one space, trained
so that an image is close to every text that describes it, also partial ones ("a star",
"a red shape on a dotted background"). ``similarity`` gives CLIP-style cosine scores.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ...core.models import hash_modules
from .classifier import conv_trunk
from .data import vocabulary
from .saving import load_module, save_module


def words_of(text: str) -> list[str]:
    """Lower-case words of a text (punctuation dropped)."""
    return re.findall(r"[a-z]+", text.lower())


class ShapesCLIP(nn.Module):
    """Images in [0, 1] and texts of the world's vocabulary, embedded into one unit sphere."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64), embed_dim: int = 64, image_size: int = 32,
                 words: Sequence[str] | None = None) -> None:
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.image_size = int(image_size)
        self.embed_dim = int(embed_dim)
        self.words = list(words if words is not None else vocabulary())
        self.index = {w: i for i, w in enumerate(self.words)}
        self.image_trunk, features = conv_trunk(self.channels, self.image_size)
        self.image_proj = nn.Linear(features, self.embed_dim)
        self.word_embedding = nn.EmbeddingBag(len(self.words), self.embed_dim, mode="mean")
        self.text_mlp = nn.Sequential(nn.Linear(self.embed_dim, 2 * self.embed_dim), nn.SiLU(),
                                      nn.Linear(2 * self.embed_dim, self.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.5))  # log of the inverse temperature

    def identity(self) -> str:
        """A content hash of the weights and vocabulary (keys cached scores)."""
        return hash_modules(self) + "-" + str(len(self.words))

    def _device(self) -> torch.device:
        return self.logit_scale.device

    def encode_images(self, images01: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings, (B, embed_dim)."""
        features = self.image_trunk(images01.to(self._device(), torch.float32) * 2 - 1)
        return nn.functional.normalize(self.image_proj(features), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings, (T, embed_dim); unknown words are an error."""
        ids, offsets = [], []
        for text in texts:
            words = words_of(text)
            unknown = [w for w in words if w not in self.index]
            if unknown or not words:
                raise ValueError(
                    f"text {text!r} has no words or words outside the shapes world's vocabulary: {unknown}"
                )
            offsets.append(len(ids))
            ids.extend(self.index[w] for w in words)
        device = self._device()
        bag = self.word_embedding(torch.tensor(ids, device=device), torch.tensor(offsets, device=device))
        return nn.functional.normalize(bag + self.text_mlp(bag), dim=-1)

    @torch.no_grad()
    def similarity(self, images01: torch.Tensor, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Cosine similarity of every image with every text, (n_images, n_texts), float32 on the CPU."""
        text_emb = self.encode_texts(list(texts))
        rows = [
            self.encode_images(images01[s : s + batch_size]) @ text_emb.T
            for s in range(0, images01.shape[0], batch_size)
        ]
        return torch.cat(rows).float().cpu() if rows else torch.zeros(0, len(texts))

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` (with the vocabulary) and ``model.safetensors`` into ``folder``."""
        config = {"class": "ShapesCLIP", "channels": self.channels, "embed_dim": self.embed_dim,
                  "image_size": self.image_size, "words": self.words}
        return save_module(folder, self, config)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> "ShapesCLIP":
        """A saved contrastive model."""

        def build(config: dict) -> "ShapesCLIP":
            return cls(config["channels"], config["embed_dim"], config["image_size"], config["words"])

        return load_module(folder, "contrastive model", build, device)
