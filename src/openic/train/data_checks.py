"""Checks of the hyperparameters against the data, run before any training work (SageMaker's texts where known).

The schema (``openic.hyperparams``) validates values on their own and against each other; what needs the data —
image count, label width and range, image size after resize — is checked here, each failure a
``HyperParameterError`` (a ``ClientError``) naming the value and what is valid.
"""

from __future__ import annotations

import logging

from openic.formats.images import resized_hw
from openic.formats.lst import label_count_mismatch
from openic.hyperparams import HyperParameterError, HyperParameters

logger = logging.getLogger(__name__)


def cross_check(hp: HyperParameters, *, num_images: int | None = None, label_width: int | None = None,
                where: str | None = None,
                min_image_hw: tuple[int, int] | None = None) -> None:
    """Checks that need the data, with SageMaker's texts where known; raises HyperParameterError listing each.

    Args:
        num_images: images in the training channel.
        label_width: labels per image in the data (1 for class ids, num_classes for multi-hot).
        where: the first image's place (``file:line`` or file and record), named in label-width messages.
        min_image_hw: (height, width) before resizing of the smallest training image, or of any one image
            (with ``resize`` set the aspect ratio decides, so callers may check each distinct size).
    """
    errors = []
    if num_images is not None and num_images < hp.mini_batch_size:
        errors.append("The number of input images must be bigger or equal to the mini_batch_size. "
                      f"The data has {num_images} images and mini_batch_size is {hp.mini_batch_size}.")
    if num_images is not None and num_images != hp.num_training_samples:
        logger.warning("num_training_samples is %d but the training data has %d images; the learning-rate "
                       "schedule counts epochs by num_training_samples.", hp.num_training_samples, num_images)
    at = f"{where}: " if where else ""
    if label_width is not None and hp.multi_label == 1 and label_width != hp.num_classes:
        errors.append(label_count_mismatch(label_width, hp.num_classes, where))
    if label_width is not None and hp.multi_label == 0 and label_width != 1:
        errors.append(f"{at}The data has {label_width} labels per image but multi_label is 0, which expects one "
                      "class id per image; set multi_label=1 for multi-hot labels.")
    if min_image_hw is not None:
        c, h, w = hp.image_shape
        rh, rw = resized_hw(min_image_hw, hp.resize)
        if rh < h or rw < w:
            how = f"is {rh}x{rw} after resize={hp.resize}" if hp.resize else "and resize is not set"
            errors.append(f"An image of {min_image_hw[0]}x{min_image_hw[1]} pixels (height x width) {how}, "
                          f"smaller than the {h}x{w} crop of image_shape {c},{h},{w}; set resize to at least "
                          f"{max(h, w)} or use a smaller image_shape.")
    if errors:
        raise HyperParameterError(errors)
