#!/bin/bash
# bash benchmarks/family_eval.sh  (after: unio export runs/shapes-family runs/shapes-family-export)
# Report-seed evaluation of the shapes-family fine-tune (seed 47: never used for any choice) and the
# shipped model on the same shapes:47 scenes for the tasks they share.
set -x
cd /work/main
M=runs/shapes-family-export
O=runs/family-eval
mkdir -p $O
( unio eval --model $M --data shapes-pairs:47 --tasks reason --n 1000 --threads 1 --out $O/reason.json > $O/reason.log 2>&1
  unio eval --model $M --data shapes-clips:47 --tasks video_classify video_caption --n 1000 --threads 1 --bootstrap 200 --out $O/video.json > $O/video.log 2>&1
  unio eval --model $M --data shapes:47 --tasks retrieve --n 1000 --threads 1 --out $O/retrieve.json > $O/retrieve.log 2>&1 ) &
( unio eval --model $M --data shapes:47 --tasks entail ground --n 1000 --threads 1 --out $O/entail_ground.json > $O/entail_ground.log 2>&1
  unio eval --model $M --data shapes:47 --tasks caption vqa classify detect --n 300 --threads 1 --out $O/old_family.json > $O/old_family.log 2>&1
  unio eval --model shapes-demo --data shapes:47 --tasks caption vqa classify detect ground --n 300 --threads 1 --out $O/old_demo.json > $O/old_demo.log 2>&1 ) &
wait
echo ALLDONE
