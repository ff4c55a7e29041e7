"""Data: sources -> ImageSet -> Batches."""
from .batches import Batches, epoch_permutation
from .images import decode_image, pil_to_tensor, resize_images, to_channels
from .imageset import ImageSet
from .preprocess import Preprocess
from .registry import DATASETS, dataset_spec, list_datasets, load_dataset
from .sources import load_folder

__all__ = ["Batches", "epoch_permutation", "decode_image", "pil_to_tensor", "resize_images",
           "to_channels", "ImageSet", "Preprocess", "DATASETS", "dataset_spec", "list_datasets",
           "load_dataset", "load_folder"]
