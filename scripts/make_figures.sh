#!/usr/bin/env bash
# Regenerates every committed figure in figures/ (offline: built-in bicycle, vgg16-caffe weights).
set -euo pipefail
cd "$(dirname "$0")/.."
deconvviz reconstruct --weights vgg16-caffe --out figures/bicycle-reconstruction.png -q
deconvviz reconstruct --weights vgg16-caffe --stage-view mean --out figures/bicycle-reconstruction-mean.png -q
deconvviz visualize --weights vgg16-caffe --region bicycle --exclude dog --top 6 --out figures/bicycle-region-maps.png -q
deconvviz visualize --weights vgg16-caffe --out figures/conv5_3-top9.png -q
deconvviz visualize --weights vgg16-caffe --layers conv1_2,conv3_3,conv5_3 --top 6 --out figures/layers-grid.png -q
deconvviz reconstruct --weights vgg16-caffe --mode map --channels all --out figures/bicycle-reconstruction-all-maps.png -q
deconvviz occlusion --weights vgg16-caffe --out figures/occlusion-conv5_3.png -q
deconvviz compare --weights vgg16-caffe --out figures/compare-conv5_3.png -q
deconvviz sanity --weights vgg16-caffe --dpi 110 --out figures/sanity-conv5_3.png -q
deconvviz ablate --weights vgg16-caffe --out figures/ablate-pool5.png -q
deconvviz filters --weights vgg16-caffe --out figures/filters-conv1_1.png -q
for transform in shift scale rotate; do
    deconvviz invariance --weights vgg16-caffe --transform "$transform" --out "figures/invariance-$transform.png" -q
done
# SqueezeNet 1.1 (card squeezenet1_1-keras, offline, with a classifier): block stages, rules, --class 671.
deconvviz reconstruct --weights squeezenet1_1-keras --region bicycle --exclude dog --mode map --out figures/squeezenet-reconstruction.png -q
deconvviz compare --weights squeezenet1_1-keras --out figures/squeezenet-compare.png -q
deconvviz visualize --weights squeezenet1_1-keras --class 671 --out figures/squeezenet-class671.png -q
# A small dataset scan over the darknet photos beside the checkout (and the built-in bicycle), when present.
IMAGES=${IMAGES:-../shared/images}
if [ -d "$IMAGES" ]; then
    rm -rf runs/figures-scan && mkdir -p runs/figures-scan/photos
    cp "$IMAGES"/*.jpg deconvviz/data/bicycle.jpg runs/figures-scan/photos/
    deconvviz scan runs/figures-scan/photos --weights vgg16-caffe --layer conv4_3 --top 4 --out runs/figures-scan/run -q
    cp runs/figures-scan/run/conv4_3/overview.png figures/scan-conv4_3-overview.png
    # The site of a conv5_3 scan of 100 seeded crops and flips of these photos, seen in Chromium (needs
    # `pip install playwright` and Debian's chromium): index, layer page, unit page.
    rm -rf runs/figures-site
    python scripts/make_crops.py "$IMAGES"/*.jpg deconvviz/data/bicycle.jpg --count 100 --out runs/figures-site/photos
    deconvviz scan runs/figures-site/photos --weights vgg16-caffe --layer conv5_3 --out runs/figures-site/run -q
    deconvviz site runs/figures-site/run --out runs/figures-site/site -q
    python scripts/site_screenshots.py runs/figures-site/site conv5_3 303 --prefix figures/site-conv5_3
    # The site of a features.fire9 SqueezeNet scan of 40 seeded crops and flips of the same photos.
    rm -rf runs/sq-site
    python scripts/make_crops.py "$IMAGES"/*.jpg deconvviz/data/bicycle.jpg --count 40 --out runs/sq-site/photos
    deconvviz scan runs/sq-site/photos --weights squeezenet1_1-keras --layer features.fire9 --out runs/sq-site/run -q
    deconvviz site runs/sq-site/run --out runs/sq-site/site -q
    python scripts/site_screenshots.py runs/sq-site/site features.fire9 308 --prefix figures/site-squeezenet
fi
