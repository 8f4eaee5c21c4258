"""unio results as supervision.Detections, drawn with supervision's own annotators."""
import numpy as np
import pytest
from PIL import Image

import unio
from unio.data.shapes import ShapesWorld
from unio.errors import InputError
from unio.interop import to_supervision
from unio.tasks import Box, Detection

sv = pytest.importorskip("supervision")


@pytest.fixture(scope="module")
def shipped():
    return unio.load("shapes-demo", device="cpu")


def test_detections_keep_boxes_scores_labels_and_class_ids(shipped):
    sample = ShapesWorld(seed=4244)[0]
    found = shipped.detect(sample["image"])
    classes = shipped.classes["object"]
    dets = to_supervision(found, classes=classes)
    assert len(dets) == len(found) > 0
    assert np.allclose(dets.xyxy, [d.box for d in found]) and np.allclose(dets.confidence, [d.score for d in found])
    assert [classes[i] for i in dets.class_id] == [d.label for d in found] == list(dets.data["class_name"])
    drawn = sv.LabelAnnotator().annotate(sv.BoxAnnotator().annotate(sample["image"].copy(), dets), dets)
    assert isinstance(drawn, Image.Image) and np.asarray(drawn).std() > 0
    assert not np.array_equal(np.asarray(drawn), np.asarray(sample["image"]))  # the boxes were drawn


def test_groundings_and_masks(shipped):
    sample = ShapesWorld(seed=4244)[1]
    expression = sample["refexps"][0][0]
    box = shipped.ground(sample["image"], expression)
    one = to_supervision(box, label=expression)
    assert len(one) == 1 and np.allclose(one.xyxy[0], box.to_list()) and one.data["class_name"][0] == expression
    mask = shipped.segment(sample["image"], expression)
    seg = to_supervision(mask, label=expression)
    assert seg.mask.shape == (1, *mask.shape) and seg.mask[0].sum() == mask.sum()
    ys, xs = np.nonzero(mask)
    assert seg.xyxy[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    drawn = sv.MaskAnnotator().annotate(sample["image"].copy(), seg)
    assert not np.array_equal(np.asarray(drawn), np.asarray(sample["image"]))


def test_empty_and_unknown_results():
    assert len(to_supervision([])) == 0 and len(to_supervision(None)) == 0
    assert len(to_supervision(np.zeros((4, 4), bool))) == 0
    d = to_supervision([Detection((0, 0, 2, 2), "new thing", 0.5)], classes=["cat"])
    assert d.class_id.tolist() == [1]  # labels outside the classes are numbered after them
    assert len(to_supervision(Box(0, 0, 1, 1))) == 1
    with pytest.raises(InputError, match="takes detections"):
        to_supervision("a caption")
