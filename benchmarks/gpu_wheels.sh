#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels benchmarks/gpu_leg.sh installs on a GPU machine that
# reaches no package index: what unio needs beyond that machine's own image (torch, transformers,
# numpy, scipy, sentencepiece, safetensors, accelerate, einops, msgpack, ninja, psutil,
# py-cpuinfo, tqdm, pyyaml, pillow, httpx, anyio, h11, click are there). Versions are the ones
# this repository's CI installs. Writes .whl/ (git-ignored), about 12 MiB.
#
#   bash benchmarks/gpu_wheels.sh            # then carry .whl with the device command
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
PURE=(hjson==3.1.0 pydantic==2.13.4 annotated-types==0.7.0 typing-inspection==0.4.2 typing_extensions==4.16.0
      vector-quantize-pytorch==1.32.0 einx==0.4.3 frozendict==2.5.1 loguru==0.7.3 torch-einops-utils==0.2.0
      fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 python-multipart==0.0.34 annotated-doc==0.0.7
      opentelemetry-api==1.45.3)
BINARY=(pydantic-core==2.46.4 pycocotools==2.0.11)
python3 -m pip download -q --no-deps "${PLAT[@]}" -d .whl "${PURE[@]}" "${BINARY[@]}"
# DeepSpeed is published as a source archive only: build its (pure Python) wheel here; its CUDA
# kernels are compiled at run time when a run asks for them (unio's recipes do not).
[ -n "$(ls .whl/deepspeed-0.19.8-*.whl 2>/dev/null)" ] || \
  DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps deepspeed==0.19.8 -w .whl
ls -la .whl | tail -n +2
du -sh .whl
