#!/bin/bash
# bash benchmarks/multi_image_eval.sh  (after: unio export runs/shapes-multi-image runs/shapes-multi-image-export)
# Report-seed evaluation (seed 61: never used for any choice) of the multi-image study
# (recipes/shapes-multi-image.yaml) beside the shapes-family fine-tune (recipes/shapes-family.yaml)
# on the same clips and pairs, one model after the other (MODELS="..." to evaluate others).
set -x
cd "$(dirname "$0")/.."
O=runs/multi-image-eval
mkdir -p $O
for M in ${MODELS:-runs/shapes-multi-image-export runs/shapes-family-export}; do
  tag=$(basename $M)
  unio eval --model $M --data shapes-clips:61 --tasks video_classify video_caption --n 500 --threads 2 \
    --bootstrap 200 --out $O/$tag-video.json > $O/$tag-video.log 2>&1
  unio eval --model $M --data shapes-pairs:61 --tasks reason --n 500 --threads 2 --bootstrap 200 \
    --out $O/$tag-reason.json > $O/$tag-reason.log 2>&1
done
echo ALLDONE
