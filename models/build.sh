#!/usr/bin/env bash
# The exact commands that produced the shipped models and calibration sets.
# Run from the repository root with the [train,ucr] extras installed (hours on 2 cores).
set -euo pipefail
dsp-deploy train --arch lite --dataset GunPoint --epochs 1500 --seed 9409 --threads 1 -o models/lite_gunpoint.onnx --calib-out calibration/lite_gunpoint.npz --json --quiet > models/lite_gunpoint.train.json
dsp-deploy train --arch inception --dataset GunPoint --epochs 1500 --seed 9409 --threads 1 -o models/inception_gunpoint.onnx --calib-out calibration/inception_gunpoint.npz --json --quiet > models/inception_gunpoint.train.json
dsp-deploy train --arch litetime --dataset GunPoint --epochs 1500 --seed 9409 --threads 1 -o models/litetime_gunpoint.onnx --calib-out calibration/litetime_gunpoint.npz --json --quiet > models/litetime_gunpoint.train.json
dsp-deploy compress models/lite_gunpoint.onnx --calib calibration/lite_gunpoint.npz -o models/lite_gunpoint.pruned.onnx --json > models/lite_gunpoint.compress.json
dsp-deploy compress models/inception_gunpoint.onnx --calib calibration/inception_gunpoint.npz -o models/inception_gunpoint.pruned.onnx --json > models/inception_gunpoint.compress.json
dsp-deploy compress models/litetime_gunpoint.onnx --calib calibration/litetime_gunpoint.npz -o models/litetime_gunpoint.pruned.onnx --json > models/litetime_gunpoint.compress.json
python benchmarks/model_cards.py > models/README.md
