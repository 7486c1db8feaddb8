#!/usr/bin/env bash
# Builds the payload that bench/webui_gpu/run.sh needs on the GPU machine, which can fetch nothing:
#   bench/webui_gpu/prepare.sh [PAYLOAD_DIR]          (default: .gpu_payload/ in the repo root)
# Writes PAYLOAD_DIR/main/webui.tar.xz (the WebUI v1.10.1 and its repositories, openai/CLIP,
# sd-webui-controlnet, a Hugging Face cache for the CLIP tokenizer and text config) and
# PAYLOAD_DIR/main/site-py.tar.xz and cv/site-cv.tar.xz (wheels.txt installed for CPython 3.12 x86-64, split in two so that each
# call can carry what it needs; see README.md). Code and configs only: no images, no weights.
# Runs here, with the mirrors of the `fetch` tool (MIRROR, default /work/.mirror) and a Python 3.12
# (PY312), and a Python with open_clip for the tokenizer files (HF_PY). About 10 minutes on 2 cores (xz). Nothing fetched goes into git: the folder is ignored.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PAYLOAD=$(realpath -m "${1:-$REPO/.gpu_payload}")
MIRROR=${MIRROR:-/work/.mirror}
SHARED=${SHARED:-$(cd "$REPO/../shared/webui-testing" && pwd)}
PY312=${PY312:-/root/.pyenv/versions/3.12.1/bin/python3}
HF_PY=${HF_PY:-/work/harness/venv/bin/python}  # any Python with open_clip (the CPU harness's)
WHEELS=${WHEEL_CACHE:-$PAYLOAD/wheels}   # downloads are kept between runs
XZ=${XZ:-xz -T2 -9}
BUILD=$PAYLOAD/build
rm -rf "$BUILD" && mkdir -p "$BUILD/src" "$WHEELS"

extract() {  # extract OWNER+NAME COMMIT DEST: one pinned tree, no .git (as tests/real_webui/build_harness.sh)
  local repo="$MIRROR/$1/repo" missing
  mkdir -p "$3"
  mapfile -t missing < <(git -C "$repo" ls-tree -r "$2" | awk '$2 == "blob" {print $3}' |
    git -C "$repo" cat-file --batch-check | awk '$2 == "missing" {print $1}' |
    grep -F -f - <(git -C "$repo" ls-tree -r "$2") | cut -f2 | sed 's/^/:(exclude)/')
  git -C "$repo" archive "$2" -- . "${missing[@]}" | tar -x -C "$3"
}

# 1. Sources, at the pins of tests/real_webui/build_harness.sh.
S=$BUILD/src
extract CoderBotics-ai+stable-diffusion-webui 82a973c04367123ae98bd9abdf80d9eda9b910e2 "$S/webui"
R=$S/webui/repositories
extract Stability-AI+stablediffusion cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf "$R/stable-diffusion-stability-ai"
extract Stability-AI+generative-models 45c443b316737a4ab6e40413d7794a7f5657c19f "$R/generative-models"
extract crowsonkb+k-diffusion ab527a9a6d347f364e3d185ba6d714e22d80cb3c "$R/k-diffusion"
extract salesforce+BLIP 48211a1594f1321b00f14c9f7a5b4813144b2fb9 "$R/BLIP"
extract AUTOMATIC1111+stable-diffusion-webui-assets 6f7db241 "$R/stable-diffusion-webui-assets"
extract openai+CLIP d50d76daa670286dd6cacf3bcd80b5e4823fc8e1 "$S/CLIP"
extract Mikubill+sd-webui-controlnet 56cec5b2 "$S/sd-webui-controlnet"
# no pictures, notebooks or sample data: the WebUI and its repositories' code do not read them
rm -rf "$R"/*/assets "$R"/generative-models/data "$S"/sd-webui-controlnet/{samples,tests,example} "$S/webui/screenshot.png"
find "$R" "$S/CLIP" "$S/sd-webui-controlnet" -type f \( -name '*.png' -o -name '*.jpg' -o -name '*.jpeg' \
  -o -name '*.gif' -o -name '*.webp' -o -name '*.ipynb' -o -name '*.mp4' -o -name '*.pdf' \) -delete

# 2. The Hugging Face cache for openai/clip-vit-large-patch14: the shared script's tokenizer files,
# and the real ViT-L/14 text config (12 layers, 768 wide), so an SD1.5/SDXL checkpoint's weights fit.
"$HF_PY" - "$S/hf_home" "$SHARED/make_hf_cache.py" <<'PY'
import json, runpy, sys, pathlib
hf_home, script = sys.argv[1], sys.argv[2]
sys.argv = [script, hf_home]
runpy.run_path(script, run_name="__main__")
for config in pathlib.Path(hf_home).glob("hub/models--openai--clip-vit-large-patch14/snapshots/*/config.json"):
    cfg = json.loads(config.read_text())
    cfg["text_config"].update(intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_size=768)
    config.write_text(json.dumps(cfg, indent=2))
    print("full-size CLIP ViT-L/14 text config:", config)
PY

# 3. The wheels, installed for CPython 3.12 (the GPU machine's) into a plain folder.
grep -v '^#' "$HERE/wheels.txt" > "$BUILD/wheels.txt"
"$PY312" -m pip download -q --no-deps --prefer-binary --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$WHEELS" -r "$BUILD/wheels.txt"
for sdist in "$WHEELS"/*.tar.gz; do  # pure-Python packages published as sources only
  [ -e "$sdist" ] || continue
  "$PY312" -m pip wheel -q --no-deps -w "$WHEELS" "$sdist" && rm "$sdist"
done
"$PY312" -m pip install -q --no-deps --no-index --no-compile --target "$BUILD/site" "$WHEELS"/*.whl
# test suites are never imported (type stubs are: scikit-image's lazy_loader reads __init__.pyi);
# gradio's CDN copy of its frontend (for hosted Spaces) and the frontend's source maps are never served
find "$BUILD/site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
rm -rf "$BUILD/site/gradio/templates/cdn"
find "$BUILD/site/gradio/templates" -name '*.map' -delete
rm -rf "$BUILD/site/bin"

# 4. Packing, in two folders that travel in different calls (64 MiB a call): main/ (webui.tar.xz,
# site-py.tar.xz: all but OpenCV) and cv/ (site-cv.tar.xz: OpenCV alone, its libraries are large).
mkdir -p "$PAYLOAD/main" "$PAYLOAD/cv"
cd "$BUILD/site"
ls -d cv2 opencv_python_headless* > "$BUILD/cv.list"
ls -A | grep -v -x -F -f "$BUILD/cv.list" > "$BUILD/py.list"
# OpenCV takes most of the time (about 8 minutes on 2 busy cores): kept when wheels.txt did not change
CV_PIN=$(grep -i '^opencv' "$BUILD/wheels.txt")
if [ ! -s "$PAYLOAD/cv/site-cv.tar.xz" ] || [ "$(cat "$PAYLOAD/site-cv.pin" 2>/dev/null)" != "$CV_PIN" ]; then
  tar -cf - -T "$BUILD/cv.list" | $XZ > "$PAYLOAD/site-cv.part" && mv "$PAYLOAD/site-cv.part" "$PAYLOAD/cv/site-cv.tar.xz"
  echo "$CV_PIN" > "$PAYLOAD/site-cv.pin"
fi
tar -cf - -T "$BUILD/py.list" | $XZ > "$PAYLOAD/main/site-py.tar.xz"
tar -cf - -C "$S" . | $XZ > "$PAYLOAD/main/webui.tar.xz"
rm -rf "$BUILD"
du -b "$PAYLOAD"/*/*.tar.xz | awk '{printf "%-50s %6.1f MiB\n", $2, $1 / 2^20}'
du -sb "$PAYLOAD"/main "$PAYLOAD"/cv | awk '{printf "carry %-44s %6.1f MiB\n", $2, $1 / 2^20}'
