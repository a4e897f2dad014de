#!/usr/bin/env sh
# Rebuild the README gallery from the photographs in sample_images/ with convcli itself.
# Run from the repository root with convcli installed: sh docs/make_gallery.sh
# (--compress-level 9: the smallest PNGs, since these are kept in the repository.)
set -eu
out=docs/gallery
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
rm -f "$out"/*.png
small="--compress-level 9 -q"
# Edges of a photograph: the seeds' 8-neighbour Laplacian and the two Sobel gradients, |x| scaled to white.
convcli apply sample_images/chelsea.png -k edge -k sobel-x -k sobel-y --mode gray --stride 2 --border replicate \
    --padding same --normalize abs -o "$tmp" --montage "$out/chelsea-edges.png" $small
# The seeds' line detectors: vertical and horizontal lines of the coffee cup and the table.
convcli apply sample_images/coffee.png -k vertical-line -k horizontal-line --mode gray --stride 2 --border replicate \
    --padding same --normalize abs -o "$tmp" --montage "$out/coffee-lines.png" $small
# A depthwise blur keeps the colours: one RGB picture out (a 5×5 Gaussian spread 3× by dilation).
convcli apply sample_images/coffee.png -k gaussian-blur --depthwise --dilation 2 --stride 2 --padding same \
    --border replicate --normalize clip -o - --compress-level 9 > "$out/coffee-blur.png"
# A two-layer stack: Sobel gradients, abs, then 2×2 max pooling.
convcli apply sample_images/astronaut.png --pipeline examples/edge-pool.yaml --mode gray -o "$tmp" \
    --montage "$out/astronaut-edge-pool.png" $small
# A bank of 16 oriented Gabor filters (what a CNN's first layer learns), one map each.
convcli apply sample_images/chelsea.png -k examples/gabor-bank16.yaml --mode gray --stride 3 --padding same \
    --border replicate --normalize abs -o "$tmp" --montage "$out/chelsea-gabor16.png" $small
