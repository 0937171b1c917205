#!/usr/bin/env bash
# Regenerates every committed figure in figures/ (offline: built-in bicycle, vgg16-caffe weights).
#   bash scripts/make_figures.sh               # figures/, at the figures' own sizes
#   bash scripts/make_figures.sh --smoke OUT   # every figure command small (64 px) into OUT: checks they run
set -euo pipefail
cd "$(dirname "$0")/.."
FIG=figures SMALL=()
if [ "${1:-}" = "--smoke" ]; then
    FIG=${2:?usage: make_figures.sh --smoke OUT} SMALL=(--size 64)
    mkdir -p "$FIG"
fi
figure() { deconvviz "$@" "${SMALL[@]}" -q; }
figure reconstruct --weights vgg16-caffe --out "$FIG/bicycle-reconstruction.png"
figure reconstruct --weights vgg16-caffe --stage-view mean --out "$FIG/bicycle-reconstruction-mean.png"
figure visualize --weights vgg16-caffe --region bicycle --exclude dog --top 6 --out "$FIG/bicycle-region-maps.png"
figure visualize --weights vgg16-caffe --out "$FIG/conv5_3-top9.png"
figure visualize --weights vgg16-caffe --layers conv1_2,conv3_3,conv5_3 --top 6 --out "$FIG/layers-grid.png"
figure reconstruct --weights vgg16-caffe --mode map --channels all --out "$FIG/bicycle-reconstruction-all-maps.png"
figure occlusion --weights vgg16-caffe --out "$FIG/occlusion-conv5_3.png"
figure compare --weights vgg16-caffe --out "$FIG/compare-conv5_3.png"
figure sanity --weights vgg16-caffe --dpi 110 --out "$FIG/sanity-conv5_3.png"
figure ablate --weights vgg16-caffe --out "$FIG/ablate-pool5.png"
deconvviz filters --weights vgg16-caffe --out "$FIG/filters-conv1_1.png" -q  # the filters: no input size
for transform in shift scale rotate; do
    figure invariance --weights vgg16-caffe --transform "$transform" --out "$FIG/invariance-$transform.png"
done
# SqueezeNet 1.1 (card squeezenet1_1-keras, offline, with a classifier): block stages, rules, --class 671.
figure reconstruct --weights squeezenet1_1-keras --region bicycle --exclude dog --mode map --out "$FIG/squeezenet-reconstruction.png"
figure compare --weights squeezenet1_1-keras --out "$FIG/squeezenet-compare.png"
figure visualize --weights squeezenet1_1-keras --class 671 --out "$FIG/squeezenet-class671.png"
# A small dataset scan over the darknet photos beside the checkout (and the built-in bicycle), when present;
# not in --smoke (tests/test_scripts.py runs make_crops.py and site_screenshots.py on their own).
IMAGES=${IMAGES:-../shared/images}
if [ -d "$IMAGES" ] && [ ${#SMALL[@]} -eq 0 ]; then
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
