"""Batching task Examples into the model's forward keyword arguments.

Sequence lengths are padded up to a multiple of ``pad_to_multiple_of`` (a small set of bucketed
shapes: fewer distinct shapes for kernels and allocators, little wasted compute). Prompts and
targets are right-padded: prompts with the pad id and ``attention_mask`` 0, targets with -100
(ignored by the loss) and weight 0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..images import to_pixel_values

__all__ = ["collate", "bucket"]


def bucket(length: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple`` (at least one multiple)."""
    multiple = max(1, int(multiple))
    return max(multiple, -(-int(length) // multiple) * multiple)


def collate(examples: Sequence, vocab, pad_to_multiple_of: int = 8, *, image_size: int | None = None,
            patch_size: int | None = None) -> dict:
    """Examples -> dict(pixel_values, has_image, patch_mask, input_ids, attention_mask, labels,
    label_weights, contrast_ids, contrast_mask), tensors ready for ``model(**batch)``.

    ``pixel_values`` is None when no example has an image; otherwise image-less examples get a
    zero image and ``has_image`` False. Examples of several images (``Example.images``: pairs, clip
    frames) make ``pixel_values`` (B, K, 3, H, W) and ``has_image`` (B, K), K the most images of any
    example of the batch (the others padded with zero images, ``has_image`` False). ``patch_mask`` is None unless an example masks patches.
    ``labels`` / ``label_weights`` are None when no example has a target (inference).
    ``contrast_ids`` / ``contrast_mask`` (B, Lt) hold the texts that examples pair with their image
    for the contrastive loss (``Example.meta["contrast_ids"]``: the retrieve task), right-padded, a
    row of zeros in the mask where an example has none; both None when no example has one.

    Given ``image_size`` and ``patch_size`` (training), every batch carries ``pixel_values`` and
    ``patch_mask`` (all False where nothing is masked), so that every parameter takes part in every
    step: ZeRO reduces gradients bucket by bucket as they are produced and needs every rank to
    produce the same ones, whatever tasks its share of the batch happens to hold.
    """
    if not examples:
        raise InputError("collate needs at least one example")
    B = len(examples)
    per_example = [_images_of(e) for e in examples]
    K = max(1, max(len(ims) for ims in per_example))  # images per example: > 1 for pairs and clips
    pixel_values = has_image = patch_mask = None
    present = [[k < len(ims) for k in range(K)] for ims in per_example]
    full = image_size is not None and patch_size is not None
    if any(map(any, present)) or full:
        sizes = {im.size for ims in per_example for im in ims} or {(image_size, image_size)}
        if len(sizes) > 1 or (full and sizes != {(image_size, image_size)}):
            raise InputError(f"examples of one batch must share the input size, got {sorted(sizes)}")
        width, height = sizes.pop()
        pixel_values = torch.zeros(B, K, 3, height, width)
        slots = [(i, k) for i in range(B) for k in range(len(per_example[i]))]
        if slots:
            values = to_pixel_values([per_example[i][k] for i, k in slots])
            for (i, k), v in zip(slots, values):
                pixel_values[i, k] = v
        has_image = torch.tensor(present, dtype=torch.bool)
        masks = [e.patch_mask for e in examples]
        if any(m is not None for m in masks) or full:
            shape = next((np.asarray(m).shape for m in masks if m is not None),
                         (height // (patch_size or 1), width // (patch_size or 1)))
            patch_mask = torch.zeros((B, K, *shape), dtype=torch.bool)
            for i, m in enumerate(masks):
                if m is not None:  # an example's patch mask applies to its first image
                    patch_mask[i, 0] = torch.from_numpy(np.asarray(m, dtype=bool))
            if K == 1:
                patch_mask = patch_mask[:, 0]
        if K == 1:  # one image per example: the (B, 3, H, W) layout every single-image model reads
            pixel_values, has_image = pixel_values[:, 0], has_image[:, 0]

    L = bucket(max(len(e.input_ids) for e in examples), pad_to_multiple_of)
    input_ids = torch.full((B, L), int(vocab.pad_id), dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.as_tensor(e.input_ids, dtype=torch.long)
        attention_mask[i, :n] = 1

    labels = label_weights = None
    T = max(len(e.labels) for e in examples)
    if T:
        T = bucket(T, pad_to_multiple_of)
        labels = torch.full((B, T), -100, dtype=torch.long)
        label_weights = torch.zeros((B, T), dtype=torch.float32)
        for i, e in enumerate(examples):
            n = len(e.labels)
            if not n:
                continue
            labels[i, :n] = torch.as_tensor(e.labels, dtype=torch.long)
            w = e.label_weights
            if w is not None and len(w) != n:
                raise InputError(f"example {i} ({e.task}) has {n} labels but {len(w)} label weights")
            label_weights[i, :n] = 1.0 if w is None else torch.as_tensor(w, dtype=torch.float32)
    contrast_ids = contrast_mask = None
    texts = [(getattr(e, "meta", None) or {}).get("contrast_ids") or [] for e in examples]
    if any(texts):
        Lt = bucket(max(map(len, texts)), pad_to_multiple_of)
        contrast_ids = torch.full((B, Lt), int(vocab.pad_id), dtype=torch.long)
        contrast_mask = torch.zeros((B, Lt), dtype=torch.long)
        for i, t in enumerate(texts):
            contrast_ids[i, :len(t)] = torch.as_tensor(t, dtype=torch.long)
            contrast_mask[i, :len(t)] = 1
    return {"pixel_values": pixel_values, "has_image": has_image, "patch_mask": patch_mask,
            "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "label_weights": label_weights, "contrast_ids": contrast_ids, "contrast_mask": contrast_mask}


def _images_of(example) -> list:
    """An example's images (several for pairs and clips); Examples of older pickles have no ``images``."""
    images = getattr(example, "images", None)
    if images:
        return list(images)
    return [] if example.image is None else [example.image]
