#!/usr/bin/env bash
# The exact commands that produced the shipped models and calibration sets.
# Run from the repository root with the [train,ucr] extras installed (hours on 2 cores).
set -euo pipefail
dsp-deploy train --arch lite --dataset GunPoint --epochs 1500 --seed 9409 --threads 1 -o models/lite_gunpoint.onnx --calib-out calibration/lite_gunpoint.npz --json --quiet > models/lite_gunpoint.train.json
dsp-deploy train --arch inception --dataset GunPoint --epochs 1500 --seed 9409 --threads 1 -o models/inception_gunpoint.onnx --calib-out calibration/inception_gunpoint.npz --json --quiet > models/inception_gunpoint.train.json
dsp-deploy train --arch litetime --dataset GunPoint --epochs 1500 --seed 9409 --threads 1 -o models/litetime_gunpoint.onnx --calib-out calibration/litetime_gunpoint.npz --json --quiet > models/litetime_gunpoint.train.json
# InceptionTime: five members trained one by one (each run ~15 min here; a crash loses one
# member, not five), the first being inception_gunpoint.onnx, then averaged on the ONNX side
# (equal to `train --arch inceptiontime --seed 9409`; see the docstring of dsp_deploy/ensemble.py).
mkdir -p build/inceptiontime
for seed in 9410 9411 9412 9413; do
  dsp-deploy train --arch inception --dataset GunPoint --epochs 1500 --seed $seed --threads 1 -o build/inceptiontime/inception_$seed.onnx --json --quiet > build/inceptiontime/inception_$seed.train.json
done
dsp-deploy ensemble models/inception_gunpoint.onnx build/inceptiontime/inception_941[0-3].onnx -o models/inceptiontime_gunpoint.onnx --json > models/inceptiontime_gunpoint.ensemble.json
dsp-deploy compress models/lite_gunpoint.onnx --calib calibration/lite_gunpoint.npz -o models/lite_gunpoint.pruned.onnx --json > models/lite_gunpoint.compress.json
dsp-deploy compress models/inception_gunpoint.onnx --calib calibration/inception_gunpoint.npz -o models/inception_gunpoint.pruned.onnx --json > models/inception_gunpoint.compress.json
dsp-deploy compress models/litetime_gunpoint.onnx --calib calibration/litetime_gunpoint.npz -o models/litetime_gunpoint.pruned.onnx --json > models/litetime_gunpoint.compress.json
dsp-deploy compress models/inceptiontime_gunpoint.onnx --calib calibration/inception_gunpoint.npz -o models/inceptiontime_gunpoint.pruned.onnx --json > models/inceptiontime_gunpoint.compress.json
python benchmarks/model_cards.py > models/README.md
