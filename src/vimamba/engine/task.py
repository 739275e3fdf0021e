"""The contract between the engine and a task.

The engine (:func:`vimamba.engine.loop.run`) owns everything a training run needs whatever is trained: distributed
setup, precision and the non-finite-step guard, the optimiser and its schedule, EMA, checkpoints and resume,
signals, progress, ``metrics.jsonl``, curves and the summary. A :class:`Task` supplies only what is specific to one
kind of model: the model, the datasets, the loss of one batch, the evaluation and the metadata a checkpoint stores so
the model can be rebuilt. Classification, segmentation, detection and pretraining are tasks; adding one never
touches the engine.

What the engine guarantees a task:

* :meth:`Task.build_model` is called once per run, on every rank, *before* the weights of a resumed run are loaded
  (so it builds the fresh model, and any ``--init`` / ``--pretrained`` weights are overwritten on resume).
* :meth:`Task.loss` runs under the engine's autocast and with the model in ``train()`` mode; the batch is already
  on the run's device (tensors, and tensors inside lists / tuples / dicts, are moved with ``non_blocking``).
* :meth:`Task.evaluate` runs on every rank with the model in ``eval()`` mode under ``torch.no_grad()`` and the
  engine's autocast; the loader
  shards the evaluation set across ranks (each sample exactly once), so the task reduces its sums with
  :func:`vimamba.engine.distributed.all_reduce_sums` (or the other helpers there) before dividing.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:  # only for annotations: the config module imports nothing from here
    from .config import EngineConfig

__all__ = ["StepOutput", "Task"]


@dataclass
class StepOutput:
    """What :meth:`Task.loss` returns for one batch.

    ``loss`` is the scalar the engine backpropagates: the engine divides it by the accumulation steps, scales it
    (fp16), clips and steps, and skips the update when the loss or a gradient is not finite. ``batch_size`` is the
    number of samples in the batch on this rank (the engine weights logged means with it). ``metrics`` are extra
    per-step numbers (Python floats, e.g. the accuracy of the batch or the parts of a multi-part loss); the engine
    logs their running means next to ``loss``.
    """

    loss: torch.Tensor
    batch_size: int
    metrics: Dict[str, float] = field(default_factory=dict)


class Task(abc.ABC):
    """One kind of model to train: the engine calls these methods, the task never drives the loop.

    Subclasses set two class attributes:

    * ``name``: the checkpoint task, one of :data:`vimamba.checkpoints.TASKS` (``"classification"``,
      ``"segmentation"``, ``"detection"``, ``"pretraining"``);
    * ``best_metric``: ``(metric name, "max" | "min")``: the key of :meth:`evaluate`'s result that selects
      ``best.pth`` and whether larger is better, e.g. ``("top1", "max")``, ``("mIoU", "max")``, ``("loss", "min")``.
    """

    name: ClassVar[str]
    best_metric: ClassVar[Tuple[str, str]]

    # --- the model and the data -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The fresh model on the CPU: random initialisation, or the initial weights the task's config names
        (``--pretrained``, ``--init`` a pretraining checkpoint, ...). The engine moves it to the device, wraps it
        for distributed training and, when resuming, loads the checkpoint's weights over it."""

    @abc.abstractmethod
    def train_dataset(self) -> Dataset:
        """The training set (map-style, with ``__len__``). The engine builds the sampler (sharded across ranks,
        reshuffled per epoch from the seed, resumable mid-epoch) and the :class:`~torch.utils.data.DataLoader`
        (batch size, workers, :meth:`collate_fn`, ``drop_last=True``) around it; augmentation lives in the dataset."""

    def eval_dataset(self) -> Optional[Dataset]:
        """The evaluation set, or ``None`` for a run without evaluation (then ``best.pth`` is never written).
        The engine shards it across ranks without padding and without dropping samples."""
        return None

    def collate_fn(self) -> Optional[Callable]:
        """How samples become a batch (for both loaders); ``None`` means PyTorch's default collation.
        Detection returns a function that keeps images and targets as lists."""
        return None

    def repeated_augmentation(self) -> bool:
        """Whether the training sampler repeats each sample on several ranks per epoch (DeiT's repeated
        augmentation; distributed runs only). Default: no."""
        return False

    def eval_batch_size(self, train_batch_size: int) -> int:
        """The per-rank batch size of the evaluation loader; by default the training batch size."""
        return train_batch_size

    # --- one step and one evaluation ------------------------------------------------------------------------------

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> StepOutput:
        """The loss of one training batch (as the loader yields it, already on the device). Batch-level
        augmentation that needs the model's device (mixup / cutmix, masking) belongs here. Called under the
        engine's autocast; must not call ``backward`` or step anything."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        """Evaluate ``model`` on ``loader`` (this rank's shard of :meth:`eval_dataset`) and return the metrics,
        identical on every rank (reduce across ranks before dividing). Must include ``best_metric[0]``. ``model`` is
        the unwrapped network (or its EMA copy), in ``eval()`` mode, under ``torch.no_grad()``."""

    # --- optimiser ------------------------------------------------------------------------------------------------

    def param_groups(self, model: nn.Module, engine_cfg: "EngineConfig") -> List[Dict[str, Any]]:
        """The optimiser's parameter groups. The default applies the engine's weight-decay rules (no decay for
        1-D parameters, biases and ``model.no_weight_decay()``) and, when ``engine_cfg.layer_decay`` is set, BEiT
        layer-wise LR decay from ``model.group_matcher()``. A task overrides this when its model needs other groups
        (e.g. a backbone with layer decay under task heads); groups may carry ``lr_scale``."""
        from .optim import build_param_groups

        return build_param_groups(model, engine_cfg.weight_decay, no_decay_ssm=not engine_cfg.decay_ssm,
                                  layer_decay=engine_cfg.layer_decay)

    # --- what a checkpoint stores ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def checkpoint_fields(self) -> Dict[str, Any]:
        """The metadata that lets the loader rebuild the model from a checkpoint alone, as keyword arguments of
        :func:`vimamba.checkpoints.make_checkpoint`: ``arch`` (``{"name", "family", "overrides"}``, required),
        and as they apply ``task_config``, ``preprocessing``, ``class_names``, ``data_config``. Plain data only
        (the file is read with ``weights_only=True``)."""

    def task_config_dict(self) -> Dict[str, Any]:
        """The task's own settings as plain data. Every checkpoint's ``config`` (and ``config.json``) is this dict
        merged with the engine's settings (``EngineConfig.to_dict()``; the names must not clash), so a run's full
        configuration, flags included, is recoverable from its checkpoint. Default: empty."""
        return {}

    # --- optional hooks -------------------------------------------------------------------------------------------

    def on_evaluated(self, model: nn.Module, run_dir: Path, step: int) -> None:
        """Called on rank 0 after every evaluation, with the evaluated model: write optional artefacts into
        ``run_dir`` (reconstructions, prediction previews). Default: nothing."""

    def on_finished(self, model: nn.Module, run_dir: Path, best_checkpoint: Path) -> None:
        """Called on rank 0 when a run has trained all its steps, after the last checkpoint was written
        (``best_checkpoint``: ``best.pth``, or ``last.pth`` when nothing was evaluated): e.g. export the weights.
        Default: nothing."""

    def summary_fields(self) -> Dict[str, Any]:
        """Extra entries for ``summary.json`` (e.g. counts the task kept while training). Called on every rank at
        the end of a run (it may reduce across ranks). Default: none."""
        return {}

    def resume_hint(self, checkpoint: Path) -> str:
        """The command line that continues an interrupted run, printed when it stops."""
        return f"--resume {checkpoint}"

    def describe(self, model: nn.Module) -> str:
        """One line naming what was built, printed at the start of a run (and used as the curves' title).
        Default: the class name and the parameter count."""
        params = sum(p.numel() for p in model.parameters())
        return f"{type(model).__name__} ({params / 1e6:.2f}M parameters)"
