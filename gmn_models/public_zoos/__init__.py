"""Loaders for public weight zoos, so that files a user has locally compile and train.

- :mod:`.small_cnn_zoo`: the Small CNN Zoo (Unterthiner et al. 2020): ``weights.npy`` rows in
  TensorFlow layout -> :class:`SmallCNN` modules and metrics.
- :mod:`.siren`: SIREN INR checkpoints in the DWSNets and NFN conventions -> :class:`Siren`.

Both convert into the project's *model folder* (``models.csv`` + ``.safetensors`` state dicts,
format in :mod:`gmn_models.model_folder`), whose ``builder`` column names :class:`SmallCNN` or
:class:`Siren` here. Nothing is downloaded: the loaders read files the user already has.
Layout assumptions and their sources are documented at the top of each module.
"""

from ..model_folder import RESERVED_COLUMNS, ModelEntry, write_model_folder
from .siren import (Siren, dwsnets_label, find_checkpoints, load_siren_checkpoint, nfn_label,
                    read_checkpoint, siren_folder_to_model_folder, siren_from_state_dict)
from .small_cnn_zoo import (SmallCNN, SmallCNNLayout, load_small_cnn_zoo, read_small_cnn_layout,
                            small_cnn_zoo_to_model_folder)

__all__ = [
    "RESERVED_COLUMNS", "ModelEntry", "write_model_folder",
    "Siren", "dwsnets_label", "find_checkpoints", "load_siren_checkpoint", "nfn_label",
    "read_checkpoint", "siren_folder_to_model_folder", "siren_from_state_dict",
    "SmallCNN", "SmallCNNLayout", "load_small_cnn_zoo", "read_small_cnn_layout",
    "small_cnn_zoo_to_model_folder",
]
