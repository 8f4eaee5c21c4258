"""Data: the built-in shapes world and readers for data on disk, all yielding one sample schema.

- ``unio.data.shapes``   the procedural shapes world (``ShapesWorld``)
- ``unio.data.formats``  readers: COCO, VQAv2, RefCOCO (``unio.data.coco``), class folders, image +
                         depth / mask folders, JSONL manifests; ``open_source(spec)`` opens a recipe entry
- ``unio.data.mixture``  the seeded multi-task mixture with a resumable position
- ``unio.data.collate``  Examples -> the model's forward keyword arguments

Nothing is imported here, so ``import unio.data.shapes`` stays light.
"""
