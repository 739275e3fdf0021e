"""Self-supervised pretraining of Vision Mamba: the objectives, their checkpoints, the transfer to a classifier,
and the evaluation of frozen features.

=================  =================================================================================================
:mod:`.patches`    pixels <-> patches, normalised-pixel targets, cluster-major order
:mod:`.causal`     the forward-only Vim encoder (the forward branch of the bidirectional mixer)
:mod:`.decoders`   the light decoders' blocks and sin-cos positions
:mod:`.ar`         autoregressive next-cluster prediction (ARM)
:mod:`.mae`        masked autoencoding with the kept patches in raster order (MAE)
:mod:`.config`     one config dataclass per objective; MAE's recipe as the engine's defaults
:mod:`.data`       unlabelled images: any folder at any depth, a dataset's training split
:mod:`.transfer`   pretraining checkpoints; a bidirectional classifier initialised from one
:mod:`.visualize`  the reconstruction PNG grid
:mod:`.training`   ``vimamba pretrain``: the pretraining task of the training engine
:mod:`.knn`        k-NN classification of frozen features
:mod:`.probe`      k-NN / linear probe of any model (``vimamba probe``)
=================  =================================================================================================
"""
from .ar import ARObjective
from .causal import ForwardOnlyVim
from .config import (ARConfig, MAEConfig, PretrainConfig, build_objective, build_pretrain_transform, config_for,
                     pretrain_configs)
from .knn import knn_accuracy, knn_predict
from .mae import MAEObjective
from .transfer import (AR_BACKWARD_CLONE_MAP, InitReport, classifier_from_pretraining,
                       init_classifier_from_pretraining, objective_from_pretraining, read_pretraining_checkpoint,
                       save_pretraining_checkpoint)
from .visualize import save_reconstruction_grid, write_reconstructions

__all__ = [
    "ARObjective", "MAEObjective", "ForwardOnlyVim", "PretrainConfig", "ARConfig", "MAEConfig", "config_for",
    "build_objective", "build_pretrain_transform", "pretrain_configs", "knn_predict", "knn_accuracy",
    "AR_BACKWARD_CLONE_MAP", "InitReport", "init_classifier_from_pretraining", "classifier_from_pretraining",
    "objective_from_pretraining", "read_pretraining_checkpoint", "save_pretraining_checkpoint",
    "save_reconstruction_grid", "write_reconstructions",
]
