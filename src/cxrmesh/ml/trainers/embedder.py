"""Training of the retrieval embedder: multi-similarity metric loss over class-balanced batches."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrmesh.contracts.labels import DIAGNOSES
from cxrmesh.contracts.tensors import EMBED_DIM
from cxrmesh.ml.augment import augment, warp
from cxrmesh.ml.data import Data, diagnosis_classes
from cxrmesh.ml.loop import CPU, run_epochs
from cxrmesh.ml.nets import Embedder


def train_embedder(
    data: Data,
    epochs: int,
    run_dir: Path,
    weights_dir: Path,
    resume: bool,
    aux_weight: float = 0.0,
    device: torch.device = CPU,
    batch: int = 30,
) -> Embedder:
    """Multi-similarity loss with its hard-pair miner over class-balanced batches.

    ``aux_weight`` > 0 adds a cross-entropy term from a linear probe on the embedding (the probe is
    discarded after training); 0 trains with the metric loss alone, as the retrieval paper does.
    """
    from pytorch_metric_learning import losses, miners, samplers

    model = Embedder().to(device)
    probe = torch.nn.Linear(EMBED_DIM, len(DIAGNOSES)).to(device)
    train_idx = data.index("train")
    labels = diagnosis_classes(data.rows[i] for i in train_idx)
    loss_fn = losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
    miner = miners.MultiSimilarityMiner(epsilon=0.1)
    batch -= batch % 3  # m per class must divide the batch
    sampler = samplers.MPerClassSampler(
        labels, m=batch // 3, batch_size=batch, length_before_new_iter=max(len(labels), batch)
    )

    def steps(epoch: int) -> Iterable[torch.Tensor]:
        order = np.array(list(iter(sampler)))
        for i in range(0, len(order) - batch + 1, batch):
            b = train_idx[order[i : i + batch]]
            y = torch.as_tensor(labels[order[i : i + batch]], device=device)
            emb, _ = model(warp(augment(data.images[b].to(device).float())))
            loss = loss_fn(emb, y, miner(emb, y))
            if aux_weight:
                loss = loss + aux_weight * F.cross_entropy(probe(emb) * 10.0, y)
            yield loss

    trained = torch.nn.ModuleDict({"model": model, "probe": probe})
    run_epochs("cxr_embedder", trained, epochs, steps, run_dir, weights_dir, 1e-3, resume)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights_dir / "cxr_embedder.pt")
    return model.eval()
