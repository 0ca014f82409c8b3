#!/bin/sh
# Entry point of the backend image: with the TensorRT backend, make sure an engine built for this GPU and
# this TensorRT exists in the engines volume, then exec the server command (CMD).
#
# An engine only runs on the GPU model and TensorRT version that built it. `engine_build tensorrt` records
# both (and the ONNX file's sha256) next to the engine and rebuilds when they differ, so a volume moved
# to another GPU, or an image with a newer TensorRT, gets a fresh engine instead of a crash.
# The detect API and the media server start together and share the volume: a lock makes the second one
# wait for the first one's build and then find the engine current.
set -eu

backend=${RTDETECT_BACKEND:-onnxruntime}
media_backend=${RTDETECT_MEDIA_BACKEND:-$backend}

if [ "$backend" = tensorrt ] || [ "$media_backend" = tensorrt ]; then
    src=${RTDETECT_MODEL_DIR:?RTDETECT_MODEL_DIR must name the exported model directory}
    cache=${RTDETECT_ENGINE_CACHE:-/var/lib/rtdetect/engines}
    [ -f "$src/model.json" ] || { echo "entrypoint: no model.json in $src" >&2; exit 1; }
    # One directory per exported model: its name plus the ONNX file's hash, so a new export never
    # meets an engine built from the old one.
    onnx_sum=$(sha256sum "$src"/*.onnx | sha256sum | cut -c1-16)
    dir="$cache/$(basename "$src")-$onnx_sum"
    mkdir -p "$cache"
    (
        # The first start builds for a minute or two; a second container waits (at most 30 minutes).
        flock -w 1800 9 || { echo "entrypoint: timed out waiting for the engine lock" >&2; exit 1; }
        if [ ! -f "$dir/model.json" ]; then
            tmp=$(mktemp -d "$cache/.staging.XXXXXX")
            cp "$src"/model.json "$src"/*.onnx "$tmp"/
            for f in "$src"/NOTICE "$src"/LICENSE*; do
                if [ -f "$f" ]; then cp "$f" "$tmp"/; fi
            done
            mv "$tmp" "$dir"
        fi
        echo "entrypoint: TensorRT engine for $(basename "$src") in $dir (built now if missing or stale)" >&2
        python -m engine_build tensorrt --model-dir "$dir"
    ) 9>"$cache/.lock"
    export RTDETECT_MODEL_DIR="$dir" RTDETECT_MEDIA_MODEL_DIR="$dir"
fi

exec "$@"
