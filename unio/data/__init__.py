"""Data: the built-in shapes world and readers for data on disk, all yielding one sample schema.

- ``unio.data.shapes``   the procedural shapes world (``ShapesWorld``)
- ``unio.data.fashion``  the fashion-scenes world: seeded scenes of real Fashion-MNIST photos (``FashionScenes``)
- ``unio.data.shapes_pairs``, ``unio.data.shapes_clips``  shapes-world image pairs with true / false
                         statements (``ShapesPairs``) and clips where one object acts (``ShapesClips``)
- ``unio.data.world``, ``unio.data.language``  what both worlds share: the seeded dataset protocol and
                         the templated language
- ``unio.data.formats``  the reader interface and ``open_source(spec)``, which opens a recipe's data
                         entry with one of the readers: COCO, VQAv2, RefCOCO (``unio.data.coco``),
                         class / depth / mask folders (``unio.data.folders``), JSONL (``unio.data.jsonl``),
                         IDX files of MNIST / Fashion-MNIST (``unio.data.idx``)
- ``unio.data.shards``   WebDataset shards as a source (streamed by shard over ranks and workers);
                         ``unio.data.pack`` writes them, ``unio.data.shard_format`` is their sample format
- ``unio.data.specs``    data specs: ``shapes:SEED``, ``SOURCE:key=value,...``, manifests, entry files
- ``unio.data.pictures`` pictures for the image tokenizer's trainer (shapes, folders, any data spec)
- ``unio.data.mixture``  the seeded multi-task mixture with a resumable position
- ``unio.data.collate``  Examples -> the model's forward keyword arguments

Nothing is imported here, so ``import unio.data.shapes`` stays light.
"""
