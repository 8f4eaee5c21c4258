"""Every metric against values computed by hand on small cases (the working is in the comments)."""
import math

import numpy as np
import pytest
from PIL import Image

from unio.errors import InputError
from unio.metrics import (accuracy, bleu, bleu4, box_iou, caption_tokens, cider, cider_scores, coco_detection_map,
                          depth_metrics, exact_match, grounding_acc, mask_iou, miou, normalize_answer, psnr,
                          vqa_accuracy)


# --------------------------------------------------------------------------- BLEU-4
def test_bleu4_hand_computed():
    # pred: "a red circle is above the blue square" (8 tokens); refs of 8 tokens each -> BP = 1
    #   1-grams: all 8 in some ref                                           8/8
    #   2-grams: a red, red circle, circle is, is above, the blue, blue square
    #            match; "above the" does not                                  6/7
    #   3-grams: a red circle, red circle is, circle is above, the blue square 4/6
    #   4-grams: a red circle is, red circle is above                        2/5
    #   BLEU-4 = (1 * 6/7 * 4/6 * 2/5) ** (1/4) = (24/105) ** 0.25 = 0.691442
    pred = "a red circle is above the blue square"
    refs = ["a red circle is above a blue square", "the red circle is over the blue square"]
    assert bleu4(pred, refs) == pytest.approx((24 / 105) ** 0.25, abs=1e-12)
    assert bleu4([pred], [refs]) == pytest.approx(0.691442, abs=1e-6)


def test_bleu4_brevity_penalty_and_corpus_pooling():
    # counts pool over the corpus: the short 4-token prediction has 1 matching 4-gram, the exact one 5,
    # so every precision is 1; c = 8 + 4 = 12, r = 8 + 8 = 16, BP = exp(1 - 16/12) = exp(-1/3)
    ref = "a red circle is above the blue square"
    assert bleu4([ref, "a red circle is"], [[ref], [ref]]) == pytest.approx(math.exp(-1 / 3), abs=1e-12)
    assert bleu4([ref], [[ref]]) == 1.0
    # the closest reference length is used: a 4-token ref makes the short prediction unpenalised
    assert bleu4(["a red circle is"], [[ref, "a red circle is"]]) == 1.0


def test_bleu_edge_cases():
    assert bleu4("red", ["a red circle"]) == 0.0  # no 2-, 3-, 4-grams at all
    assert bleu4("x y z w", ["a b c d"]) == 0.0
    assert bleu4([], []) == 0.0
    assert bleu("a red circle", ["a red circle"], max_n=2) == 1.0
    assert bleu4("A red circle, is above.", ["a red circle is above"]) == 1.0  # case and punctuation ignored
    with pytest.raises(InputError, match="2 predictions but 1 reference lists"):
        bleu4(["a", "b"], [["a"]])
    with pytest.raises(InputError, match="at least one reference"):
        bleu4(["a"], [[]])


def test_caption_tokens():
    assert caption_tokens("A man's RED-hat, on a dog!") == ["a", "mans", "red", "hat", "on", "a", "dog"]


# --------------------------------------------------------------------------- CIDEr-D
def test_cider_hand_computed():
    # 2 images -> idf weight log(2) - log(df); every n-gram here is in one image's refs: weight log 2.
    # image 1: "a b" vs ref "a b": cosine 1 for n = 1, 2; no 3-, 4-grams -> 0. 10 * mean(1, 1, 0, 0) = 5
    # image 2: "c" vs ref "c d": 1-gram cosine = log2^2 / (log2 * sqrt(2) log2) = 1/sqrt 2, 2-grams 0;
    #   length penalty exp(-(0 - 1)^2 / (2 * 6^2)) (lengths in bigrams: 0 vs 1)
    #   10 * (1/sqrt 2 * exp(-1/72)) / 4 = 1.743384
    scores = cider_scores(["a b", "c"], [["a b"], ["c d"]])
    expected = [5.0, 2.5 / math.sqrt(2) * math.exp(-1 / 72)]
    assert scores == pytest.approx(expected, abs=1e-9)
    assert cider(["a b", "c"], [["a b"], ["c d"]]) == pytest.approx(np.mean(expected), abs=1e-9)
    assert expected[1] == pytest.approx(1.743384, abs=1e-6)


CAPTIONS = ["a small red circle above a blue square", "two green triangles next to each other",
            "one large yellow star in the corner of the image"]


def test_cider_maximum_is_ten_for_the_consensus_caption():
    refs = [[c] * 3 for c in CAPTIONS]  # every annotator wrote the same caption
    assert cider_scores(CAPTIONS, refs) == pytest.approx([10.0, 10.0, 10.0], abs=1e-9)
    worse = [CAPTIONS[0].replace("blue", "green"), "two green triangles", CAPTIONS[2] + " again"]
    assert (cider_scores(worse, refs) < 10.0 - 1e-6).all()


def test_cider_zero_without_shared_ngrams_and_for_ubiquitous_ngrams():
    refs = [[c] for c in CAPTIONS]
    assert cider_scores(["purple hexagon", "tiny dot", "nothing here"], refs).tolist() == [0.0, 0.0, 0.0]
    # "the" is in every image's refs: idf log(3/3) = 0, so it earns nothing
    with_the = [["the " + c] for c in CAPTIONS]
    assert cider_scores(["the", "the", "the"], with_the).tolist() == [0.0, 0.0, 0.0]
    # one image alone: every n-gram is in all (one) documents
    assert cider([CAPTIONS[0]], [[CAPTIONS[0]]]) == 0.0
    assert cider([], []) == 0.0


def test_cider_is_invariant_to_image_and_reference_order():
    refs = [[CAPTIONS[0], "a red circle over a blue square"], [CAPTIONS[1], "green triangles side by side"],
            [CAPTIONS[2], "a big yellow star"]]
    preds = ["a red circle above a square", "green triangles", "a yellow star in the corner"]
    base = cider_scores(preds, refs)
    assert (base > 0).all() and (base < 10).all()
    order = [2, 0, 1]
    permuted = cider_scores([preds[i] for i in order], [refs[i][::-1] for i in order])
    assert permuted == pytest.approx(base[order], abs=1e-12)
    assert cider(preds, refs) == pytest.approx(base.mean())
    # repeating every reference changes neither the idf (a set per image) nor the mean over references
    assert cider_scores(preds, [r * 2 for r in refs]) == pytest.approx(base, abs=1e-12)
    # case and punctuation are tokenised away
    shouted = [p.upper() + "!" for p in preds]
    assert cider_scores(shouted, refs) == pytest.approx(base, abs=1e-12)


# --------------------------------------------------------------------------- VQA accuracy
@pytest.mark.parametrize("humans, expected", [
    # leave-one-out over the 10 answers: with k matching humans, 10 - k subsets keep all k and
    # k subsets keep k - 1; each subset scores min(matches / 3, 1)
    (0, 0.0),
    (1, 0.3),  # (9 * 1/3 + 1 * 0) / 10
    (2, 0.6),  # (8 * 2/3 + 2 * 1/3) / 10
    (3, 0.9),  # (7 * 1 + 3 * 2/3) / 10
    (4, 1.0),
    (10, 1.0),
])
def test_vqa_accuracy_classic_cases(humans, expected):
    answers = ["two"] * humans + ["three"] * (10 - humans)
    assert vqa_accuracy("2", answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_normalisation():
    assert normalize_answer("Two") == "2"
    assert normalize_answer("a dog.") == "dog"
    assert normalize_answer("Yes!") == "yes"
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("red-and-white") == "red and white"
    assert normalize_answer("the  cat's toy ?") == "cat's toy"
    assert normalize_answer(" None\n") == "0"
    assert vqa_accuracy("The Dog.", ["dog"] * 10) == 1.0
    # batched: mean of the per-question accuracies
    assert vqa_accuracy(["yes", "no"], [["yes"] * 10, ["yes"] * 9 + ["no"]]) == pytest.approx((1.0 + 0.3) / 2)
    with pytest.raises(InputError, match="human answers"):
        vqa_accuracy("yes", [])


def test_exact_match_and_accuracy():
    assert exact_match(["A red circle.", "two"], ["a red circle", ["2", "three"]]) == 1.0
    assert exact_match(["A red circle."], ["a red circle"], normalize=False) == 0.0
    assert exact_match(["blue"], ["red"]) == 0.0
    assert accuracy(["circle", "star", "square"], ["circle", "star", "star"]) == pytest.approx(2 / 3)
    with pytest.raises(InputError, match="2 predictions but 1 targets"):
        accuracy(["a", "b"], ["a"])


# --------------------------------------------------------------------------- boxes
def test_box_iou_and_grounding():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    table = box_iou([[0, 0, 10, 10], [0, 0, 20, 20]], [[0, 0, 10, 10], [10, 10, 20, 20], [30, 30, 31, 31]])
    assert table.shape == (2, 3) and table[1].tolist() == pytest.approx([0.25, 0.25, 0.0])
    assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    gts = [[0, 0, 10, 10]] * 4
    preds = [[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4.9], None]  # IoU 1, 0.5 (counts), 0.49, missing
    assert grounding_acc(preds, gts) == 0.5
    assert grounding_acc(preds, gts, thr=0.4) == 0.75
    with pytest.raises(InputError, match=r"shape \(4,\) or \(N, 4\)"):
        box_iou([0, 0, 1], [0, 0, 1, 1])
    with pytest.raises(InputError, match="2 predicted boxes but 1 targets"):
        grounding_acc([None, None], [[0, 0, 1, 1]])


def det(box, label, score):
    return {"box": box, "label": label, "score": score}


A, B = [0, 0, 10, 10], [20, 20, 30, 30]


def test_coco_map_hand_computed():
    # One image, 2 GT circles, 3 detections by score: exact hit on A (0.9), a false positive
    # (0.8), a box on B with IoU 100/160 = 0.625 (0.7).
    # IoU thresholds .50, .55, .60 (3 of 10): TP FP TP -> recall .5 .5 1, precision 1 .5 .667;
    #   interpolated precision is 1 for recall <= .5 (51 of the 101 points) and 2/3 above (50)
    #   -> AP = (51 + 50 * 2/3) / 101 = 0.834983
    # thresholds .65 ... .95 (7 of 10): TP FP FP -> recall tops out at .5 -> AP = 51/101 = 0.504950
    # mAP = (3 * 0.834983 + 7 * 0.504950) / 10 = 0.603960
    preds = [[det(A, "circle", 0.9), det([50, 50, 60, 60], "circle", 0.8), det([20, 20, 30, 36], "circle", 0.7)]]
    gts = [[{"box": A, "label": "circle"}, {"box": B, "label": "circle"}]]
    ap50, ap75 = (51 + 50 * 2 / 3) / 101, 51 / 101
    out = coco_detection_map(preds, gts, ["circle"])
    assert out["map50"] == pytest.approx(ap50, abs=1e-6)
    assert out["map75"] == pytest.approx(ap75, abs=1e-6)
    assert out["map"] == pytest.approx((3 * ap50 + 7 * ap75) / 10, abs=1e-6)
    # the scores matter: ranking the false positive first gives precision 1/2, 2/3 at recall .5, 1
    # -> interpolated 2/3 everywhere at IoU .5
    reranked = [[det(A, "circle", 0.5), det([50, 50, 60, 60], "circle", 0.95), det(B, "circle", 0.4)]]
    assert coco_detection_map(reranked, gts)["map50"] == pytest.approx(2 / 3, abs=1e-6)


def test_coco_map_images_without_predictions_and_other_categories():
    # A second image with one GT circle and no detections: 3 GT in all.
    # IoU .5-.6: TP FP TP -> recall 1/3 1/3 2/3 -> precision 1 on 34 recall points (0 .. .33),
    #   2/3 on 33 points (.34 .. .66), 0 above -> AP = (34 + 22) / 101
    # IoU .65+: TP FP FP -> AP = 34 / 101;  mAP = (3 * 56 + 7 * 34) / 1010
    preds = [[det(A, "circle", 0.9), det([50, 50, 60, 60], "circle", 0.8), det([20, 20, 30, 36], "circle", 0.7),
              det(A, "hexagon", 0.99)],  # a label outside the categories: dropped
             []]
    gts = [[{"box": A, "label": "circle"}, {"box": B, "label": "circle"}], [{"box": B, "label": "circle"}]]
    out = coco_detection_map(preds, gts, ["circle", "square"])  # "square": no GT, left out of the mean
    assert out["map50"] == pytest.approx(56 / 101, abs=1e-6)
    assert out["map75"] == pytest.approx(34 / 101, abs=1e-6)
    assert out["map"] == pytest.approx(406 / 1010, abs=1e-6)
    # Detection-like objects and (box, label, score) tuples work too
    from collections import namedtuple
    Detection = namedtuple("Detection", "box label score")
    as_objects = [[Detection(**d) if "score" in d else d for d in img] for img in preds]
    as_tuples = [[(d["box"], d["label"], d["score"]) for d in img] for img in preds]
    assert coco_detection_map(as_objects, gts, ["circle", "square"]) == out
    assert coco_detection_map(as_tuples, gts, ["circle", "square"]) == out


def test_coco_map_empty_cases():
    gts = [[{"box": A, "label": "circle"}]]
    assert coco_detection_map([[]], gts) == {"map": 0.0, "map50": 0.0, "map75": 0.0}
    empty = coco_detection_map([[det(A, "circle", 1.0)]], [[]], ["circle"])
    assert all(math.isnan(v) for v in empty.values())  # no ground truth: undefined
    assert all(math.isnan(v) for v in coco_detection_map([], []).values())
    perfect = coco_detection_map([[det(A, "circle", 1.0)], [det(B, "star", 0.3)]],
                                 [gts[0], [{"box": B, "label": "star"}]])
    assert perfect == pytest.approx({"map": 1.0, "map50": 1.0, "map75": 1.0}, abs=1e-9)


def test_coco_map_bad_inputs():
    gts = [[{"box": A, "label": "circle"}]]
    with pytest.raises(InputError, match="1 prediction lists but 2 ground-truth lists"):
        coco_detection_map([[]], gts * 2)
    with pytest.raises(InputError, match="needs a score"):
        coco_detection_map([[{"box": A, "label": "circle"}]], gts)
    with pytest.raises(InputError, match="'circle' is not among the categories"):
        coco_detection_map([[]], gts, ["square"])


# --------------------------------------------------------------------------- masks, depth, images
def test_mask_iou_and_miou():
    a = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b = np.zeros((4, 4), bool)
    b[1:3] = True  # 8 pixels, 4 shared -> IoU 4 / 12
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(a, a) == 1.0 and mask_iou(a, ~a) == 0.0
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0  # both empty agree
    assert miou([a, a], [b, a]) == pytest.approx((1 / 3 + 1) / 2)
    with pytest.raises(InputError, match="unletterbox"):
        mask_iou(a, np.zeros((4, 5), bool))


def test_depth_metrics():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # the 0 pixel is invalid
    assert depth_metrics(gt, gt) == {"absrel": 0.0, "rmse": 0.0, "delta1": 1.0}
    pred = np.array([[1.2, 3.0], [4.0, 9.0]])
    # valid pixels: errors 0.2, 1.0, 0 -> absrel = (0.2/1 + 1/2 + 0) / 3 = 0.233333
    # rmse = sqrt((0.04 + 1 + 0) / 3) = 0.588784;  ratios 1.2, 1.5, 1.0 -> delta1 = 2/3
    out = depth_metrics(pred, gt)
    assert out["absrel"] == pytest.approx(0.7 / 3)
    assert out["rmse"] == pytest.approx(math.sqrt(1.04 / 3))
    assert out["delta1"] == pytest.approx(2 / 3)
    mask = np.array([[True, False], [False, False]])
    assert depth_metrics(pred, gt, mask) == pytest.approx({"absrel": 0.2, "rmse": 0.2, "delta1": 1.0})
    # non-positive predictions are never within 1.25
    assert depth_metrics(np.array([-1.0, 0.0]), np.array([1.0, 1.0]))["delta1"] == 0.0
    both = depth_metrics([gt, pred], [gt, gt])  # a list: mean of per-image values
    assert both["absrel"] == pytest.approx(0.7 / 6) and both["delta1"] == pytest.approx(5 / 6)
    with pytest.raises(InputError, match="no valid depth pixels"):
        depth_metrics(gt, np.zeros((2, 2)))
    with pytest.raises(InputError, match="NaN"):
        depth_metrics(np.full((2, 2), np.nan), gt)
    with pytest.raises(InputError, match="mask shape"):
        depth_metrics(gt, gt, np.ones(3, bool))


def test_psnr():
    a = np.full((4, 4, 3), 100, np.uint8)
    b = a + 1  # MSE 1 -> 10 log10(255^2) = 48.1308 dB
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2))
    assert psnr(Image.fromarray(a), Image.fromarray(b)) == pytest.approx(48.1308, abs=1e-4)
    assert psnr(a, a) == math.inf
    x = np.zeros((2, 2))
    assert psnr(x, x + 0.1) == pytest.approx(20.0)  # floats: range 1, MSE 0.01
    assert psnr(x, x + 0.1, data_range=2.0) == pytest.approx(20 + 20 * math.log10(2))
    mask = np.array([[True, False], [False, False]])
    y = x.copy()
    y[1, 1] = 1.0  # the only error lies outside the mask
    assert psnr(x, y, mask=mask) == math.inf
    c = a.copy()
    c[0, 0] = 110  # inside the mask: MSE 100 over the 3 channels of one pixel -> 28.1308 dB
    corner = np.zeros((4, 4), bool)
    corner[0, 0] = True
    assert psnr(a, c, mask=corner) == pytest.approx(10 * math.log10(255 ** 2 / 100))
    assert psnr(a, c) == pytest.approx(10 * math.log10(255 ** 2 / (100 / 16)))  # whole image: MSE 100/16
    with pytest.raises(InputError, match="selects no pixels"):
        psnr(x, y, mask=np.zeros((2, 2), bool))
    with pytest.raises(InputError, match="differs from target shape"):
        psnr(np.zeros((2, 2)), np.zeros((3, 2)))


def test_psnr_of_tensors_and_per_image():
    """Tensors give what arrays give; per_image (the image tokenizer's held-out figure) gives one
    value per image of a batch, a float32 tensor for tensors, with the MSE floored at 1e-10."""
    import torch

    torch.manual_seed(0)
    a, b = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    b[0] = a[0]
    per = psnr(a, b, per_image=True)
    assert isinstance(per, torch.Tensor) and per.dtype == torch.float32 and per.shape == (3,)
    assert float(per[0]) == pytest.approx(100.0)  # identical images: 10 log10(1 / 1e-10)
    mse = ((a[1].double() - b[1].double()) ** 2).mean().item()
    assert psnr(a[1], b[1]) == psnr(a[1].numpy(), b[1].numpy()) == pytest.approx(-10 * math.log10(mse))
    assert float(per[1]) == pytest.approx(psnr(a[1], b[1]), rel=1e-5)
    assert psnr(a.numpy(), b.numpy(), per_image=True) == pytest.approx(per.numpy(), rel=1e-5)
    u8 = (a * 200).round().to(torch.uint8)  # no 255 to wrap around below
    assert float(psnr(u8, u8 + 1, per_image=True)[0]) == pytest.approx(10 * math.log10(255 ** 2), rel=1e-6)
    with pytest.raises(InputError, match="differs from target shape"):
        psnr(a, b[:2], per_image=True)


def test_vqa_accuracy_with_fewer_than_ten_answers():
    from unio.metrics import vqa_accuracy
    assert vqa_accuracy("yes", ["yes"]) == 1.0      # one reference acts as exact match
    assert vqa_accuracy("no", ["yes"]) == 0.0
    assert vqa_accuracy("2", ["2", "2", "3"]) == pytest.approx(2 / 3)
