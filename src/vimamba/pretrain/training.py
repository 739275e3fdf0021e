"""Self-supervised pretraining as a task of the training engine (``vimamba pretrain``).

:class:`PretrainTask` gives the engine (:func:`vimamba.engine.loop.run`) what is specific to pretraining; the engine
does the rest (distribution, precision, optimiser and schedule, checkpoints, exact resume, signals, logs):

* the model: the objective (``ar`` or ``mae``, :func:`~.config.build_objective`) around a Vim encoder whose
  architecture comes from the model registry (``--model`` plus the size flags);
* the data: the unlabelled images of :func:`~.data.resolve_unlabelled` with MAE's augmentation (RandomResizedCrop +
  horizontal flip), and the held-out images with the evaluation transform;
* the loss: the objective's loss of a batch; the evaluation: the same loss on the held-out images with a fixed
  mask (MAE), so the best checkpoint is the lowest held-out loss;
* after every evaluation, the reconstruction grid of the first held-out images
  (``reconstructions/step_NNNNNN.png`` in the run folder);
* the checkpoint metadata: ``arch`` is the encoder, ``task_config`` the objective and the encoder's
  :class:`~vimamba.models.vim.VimConfig`, which is what :mod:`.transfer` reads for ``vimamba train --init``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..data.images import collate_skipping_unreadable
from ..data.transforms import build_eval_transform
from ..engine.distributed import all_reduce_sums, get_rank, unwrap_model
from ..engine.task import StepOutput, Task
from ..errors import InputError
from ..models.variants import model_config, resolve_name
from ..models.vim import VimConfig
from .config import PretrainConfig, build_objective, build_pretrain_transform
from .data import UnlabelledSource, resolve_unlabelled
from .patches import check_cluster_grid
from .visualize import write_reconstructions

__all__ = ["PretrainTask", "RECONSTRUCTIONS_DIR", "encoder_overrides"]

RECONSTRUCTIONS_DIR = "reconstructions"


def encoder_overrides(cfg: PretrainConfig, img_size: Union[int, List[int]], in_chans: int) -> Dict[str, Any]:
    """The :class:`VimConfig` fields the pretraining flags change on the registered model (``arch["overrides"]``).

    Pretraining needs non-overlapping patches, so the stride always equals the patch size."""
    sizes = dict(img_size=img_size, in_chans=in_chans, num_classes=0, drop_path_rate=cfg.drop_path,
                 patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth, d_state=cfg.d_state)
    overrides = {k: v for k, v in sizes.items() if v is not None}
    overrides["stride"] = overrides.get("patch_size", model_config(cfg.model).patch_size)
    return overrides


def _check_image_fits(objective: str, encoder_cfg: VimConfig, cluster_size: Optional[int]) -> None:
    """Refuse, before anything runs, an image size the objective cannot cut into patches (and clusters)."""
    size, patch = tuple(encoder_cfg.img_size), encoder_cfg.patch_size
    if size[0] % patch or size[1] % patch:
        raise InputError(f"pretraining needs an image size that is a multiple of the patch size: {size[0]}x{size[1]} "
                         f"px is not a whole number of {patch}x{patch} patches (set --img-size or --patch-size)")
    if objective == "ar":
        check_cluster_grid((size[0] // patch, size[1] // patch), cluster_size, patch)


class PretrainTask(Task):
    """Pretraining of a Vim encoder with an ``ar`` or ``mae`` objective (see the module docs)."""

    name = "pretraining"
    best_metric = ("loss", "min")

    def __init__(self, cfg: PretrainConfig, *, seed: int = 0):
        self.cfg = cfg
        self.seed = seed
        self.arch_name = resolve_name(cfg.model)  # unknown names: a clear error naming the registered ones
        # the data first: a missing or empty folder is refused before any model is built
        self.source: UnlabelledSource = resolve_unlabelled(cfg.dataset, cfg.data, heldout_images=cfg.heldout_images,
                                                           seed=seed, strict=cfg.strict_data)
        self.preprocessing = self.source.preprocessing.with_size(cfg.img_size)
        img_size = self.preprocessing.img_size
        self.overrides = encoder_overrides(cfg, img_size[0] if img_size[0] == img_size[1] else list(img_size),
                                           self.preprocessing.in_chans)
        self.encoder_config = model_config(self.arch_name, **self.overrides)
        _check_image_fits(cfg.objective, self.encoder_config, getattr(cfg, "cluster_size", None))
        self._vis_images: Optional[torch.Tensor] = None

    # --- the model and the data -----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_objective(self.encoder_config, self.cfg)

    def train_dataset(self) -> Dataset:
        return self.source.train(build_pretrain_transform(self.cfg, self.preprocessing), self.preprocessing.in_chans)

    def eval_dataset(self) -> Optional[Dataset]:
        return self.source.heldout(build_eval_transform(self.preprocessing), self.preprocessing.in_chans)

    def collate_fn(self):
        return collate_skipping_unreadable  # (images, zeros, skipped); unreadable files are named and left out

    # --- one step and one evaluation ------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Any) -> StepOutput:
        images = batch[0]
        if images.numel() == 0:  # every image of the batch was unreadable: the engine passes over the batch
            return StepOutput(images.new_zeros(()), 0)
        loss, _ = model(images)
        return StepOutput(loss, images.shape[0])

    def _eval_generator(self) -> torch.Generator:
        """The fixed random numbers of evaluation (MAE's masks): the same held-out loss at every evaluation."""
        return torch.Generator().manual_seed(self.seed * 1000 + get_rank())

    def evaluate(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        generator = self._eval_generator()
        device = next(model.parameters()).device
        loss_sum, images_seen = 0.0, 0
        for batch in loader:
            images = batch[0]
            if images.numel() == 0:
                continue
            loss, _ = model(images.to(device), generator=generator)
            loss_sum += loss.item() * images.shape[0]
            images_seen += images.shape[0]
        totals = all_reduce_sums({"loss": loss_sum, "images": images_seen})
        if totals["images"] == 0:
            raise InputError("no held-out image could be read; the evaluation loss is undefined")
        return {"loss": totals["loss"] / totals["images"]}

    # --- what a checkpoint stores ---------------------------------------------------------------------------------
    def checkpoint_fields(self) -> Dict[str, Any]:
        encoder_config = self.encoder_config.to_dict()
        encoder_config.pop("scan_impl", None)  # a runtime choice, not the architecture
        return dict(arch={"name": self.arch_name, "family": "vim", "overrides": dict(self.overrides)},
                    task_config={"objective": self.cfg.objective, "objective_kwargs": self.cfg.objective_kwargs(),
                                 "encoder_config": encoder_config},
                    class_names=[], preprocessing=self.preprocessing.to_dict())

    def task_config_dict(self) -> Dict[str, Any]:
        return self.cfg.to_dict()

    # --- artefacts and messages -----------------------------------------------------------------------------------
    def _reconstruction_images(self) -> Optional[torch.Tensor]:
        """The first ``--vis-images`` readable held-out images (evaluation transform), loaded once."""
        if self._vis_images is None:
            heldout = self.eval_dataset()
            if heldout is None or self.cfg.vis_images == 0:
                return None
            picked: List[torch.Tensor] = []
            for i in range(len(heldout)):
                item = heldout[i]
                if item is not None:
                    picked.append(item[0])
                if len(picked) == self.cfg.vis_images:
                    break
            self._vis_images = torch.stack(picked) if picked else torch.empty(0)
        return self._vis_images if self._vis_images.numel() else None

    def on_evaluated(self, model: nn.Module, run_dir: Path, step: int) -> None:
        images = self._reconstruction_images()
        if images is None:
            return
        objective = unwrap_model(model)
        device = next(objective.parameters()).device
        write_reconstructions(objective, images.to(device), Path(run_dir) / RECONSTRUCTIONS_DIR /
                              f"step_{step:06d}.png", self.preprocessing.mean, self.preprocessing.std,
                              title=f"{self.cfg.objective} pretraining, step {step}",
                              generator=torch.Generator().manual_seed(self.seed))

    def describe(self, model: nn.Module) -> str:
        from ..train.models import describe_model

        objective = unwrap_model(model)
        decoder = sum(p.numel() for n, p in objective.named_parameters() if not n.startswith("encoder."))
        return (f"{self.cfg.objective} pretraining of {describe_model(objective.encoder, self.arch_name)} "
                f"[from {self.arch_name}] with a decoder of {decoder:,} parameters, on {self.source.description}"
                f" ({self.source.num_heldout:,} held out)")
