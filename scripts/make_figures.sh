#!/usr/bin/env bash
# Regenerates every committed figure in figures/ (offline: built-in bicycle, vgg16-caffe weights).
set -euo pipefail
cd "$(dirname "$0")/.."
deconvviz reconstruct --weights vgg16-caffe --out figures/bicycle-reconstruction.png -q
deconvviz visualize --weights vgg16-caffe --out figures/conv5_3-top9.png -q
deconvviz visualize --weights vgg16-caffe --layers conv1_2,conv3_3,conv5_3 --top 6 --out figures/layers-grid.png -q
deconvviz reconstruct --weights vgg16-caffe --mode map --channels all --out figures/bicycle-reconstruction-all-maps.png -q
