#!/usr/bin/env sh
# Rebuild the README gallery from sample_images/ with convcli itself.
# Run from the repository root with convcli installed: sh docs/make_gallery.sh
set -eu
out=docs/gallery
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
# The seeds' line detectors next to Sobel gradients, |x| scaled to white.
convcli apply sample_images/lines-gray.png -k vertical-line -k horizontal-line -k sobel-x -k sobel-y \
    --padding same --normalize abs -o "$tmp" --montage "$out/lines.png" -q
# Edges of a photo-like picture: the seeds' 8-neighbour Laplacian and the two Sobel gradients.
convcli apply sample_images/building.png -k edge -k sobel-x -k sobel-y \
    --padding same --normalize abs -o "$tmp" --montage "$out/building-edges.png" -q
# A depthwise blur keeps the colours: one RGB picture out.
convcli apply sample_images/building.png -k gaussian-blur --depthwise --padding same --border replicate \
    --normalize clip -o - > "$out/building-blur.png"
# A two-layer stack: edges, ReLU, then 2x2 max pooling.
convcli apply sample_images/building.png --pipeline examples/edge-pool.yaml -o "$tmp" \
    --montage "$out/building-edge-pool.png" -q
