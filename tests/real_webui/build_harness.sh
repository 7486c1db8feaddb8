#!/usr/bin/env bash
# Builds the real-WebUI harness that ../shared/webui-testing/README.md describes, from local git
# mirrors of the WebUI's sources (the `fetch` tool's /work/.mirror/OWNER+NAME/repo), offline.
#
#   tests/real_webui/build_harness.sh HARNESS_DIR [MIRROR_DIR] [SHARED_DIR]
#
# Writes HARNESS_DIR/{webui,venv,venv.pristine,checkpoints,hf_home,run_webui.sh}; with the mirror of
# Mikubill/sd-webui-controlnet present, also HARNESS_DIR/sd-webui-controlnet at v1.1.455's tree.
# Nothing fetched is kept in this repository. About 20-30 minutes on 2 cores.
set -euo pipefail
HARNESS=$(realpath -m "$1")
MIRROR=${2:-/work/.mirror}
SHARED=${3:-$(cd "$(dirname "$0")/../../../shared/webui-testing" && pwd)}
mkdir -p "$HARNESS"

extract() {  # extract OWNER+NAME COMMIT DEST: one pinned tree, no .git
  local repo="$MIRROR/$1/repo" missing
  rm -rf "$3" && mkdir -p "$3"
  # a mirror may lack its largest files (sample images, weights): leave those out
  mapfile -t missing < <(git -C "$repo" ls-tree -r "$2" | awk '$2 == "blob" {print $3}' |
    git -C "$repo" cat-file --batch-check | awk '$2 == "missing" {print $1}' |
    grep -F -f - <(git -C "$repo" ls-tree -r "$2") | cut -f2 | sed 's/^/:(exclude)/')
  git -C "$repo" archive "$2" -- . "${missing[@]}" | tar -x -C "$3"
}

# The WebUI v1.10.1 and the repositories its launcher would clone, at its own pins.
extract CoderBotics-ai+stable-diffusion-webui 82a973c04367123ae98bd9abdf80d9eda9b910e2 "$HARNESS/webui"
R="$HARNESS/webui/repositories"
extract Stability-AI+stablediffusion cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf "$R/stable-diffusion-stability-ai"
extract Stability-AI+generative-models 45c443b316737a4ab6e40413d7794a7f5657c19f "$R/generative-models"
extract crowsonkb+k-diffusion ab527a9a6d347f364e3d185ba6d714e22d80cb3c "$R/k-diffusion"
extract salesforce+BLIP 48211a1594f1321b00f14c9f7a5b4813144b2fb9 "$R/BLIP"
extract AUTOMATIC1111+stable-diffusion-webui-assets 6f7db241 "$R/stable-diffusion-webui-assets"
if [ -d "$MIRROR/Mikubill+sd-webui-controlnet/repo" ]; then
  # v1.1.455 (67271170) plus its two later fixes to the version parsing and controlnet_aux's pin.
  extract Mikubill+sd-webui-controlnet 56cec5b2 "$HARNESS/sd-webui-controlnet"
fi

# The venv: the WebUI's pins, with the two exceptions the README gives (torch's CPU build,
# torchvision's Python parts only; setuptools new enough for torch).
if [ ! -x "$HARNESS/venv/bin/python" ]; then
  python3 -m venv "$HARNESS/venv"
  P="$HARNESS/venv/bin/python"
  $P -m pip install -q --upgrade "setuptools>=77,<81" wheel
  $P -m pip install -q "torch==2.13.0"
  $P -m pip install -q --no-deps "torchvision==0.16.2"
  grep -v '^setuptools' "$HARNESS/webui/requirements_versions.txt" > "$HARNESS/requirements.txt"
  $P -m pip install -q -r "$HARNESS/requirements.txt"
  # torchvision 0.16.2's metadata asks for torch 2.1.2 (a CUDA build): put the CPU torch back
  $P -m pip uninstall -q -y torch triton $($P -m pip list --format=freeze | grep -o '^nvidia-[^=]*')
  $P -m pip install -q "torch==2.13.0"
  $P -m pip install -q --no-deps "torchvision==0.16.2"
  extract openai+CLIP d50d76daa670286dd6cacf3bcd80b5e4823fc8e1 "$HARNESS/CLIP"
  # --no-deps: its torchvision requirement would bring torch 2.1.2 (CUDA) back; ftfy, regex and
  # tqdm are the WebUI's requirements already
  $P -m pip install -q --no-build-isolation --no-deps "$HARNESS/CLIP"
  $P -c 'import torch, clip; assert torch.__version__ == "2.13.0+cpu", torch.__version__'
  rm -rf "$HARNESS/venv.pristine"
  cp -a "$HARNESS/venv" "$HARNESS/venv.pristine"
fi

# Offline tokenizer, tiny checkpoint, launcher.
HF_HOME="$HARNESS/hf_home" "$HARNESS/venv/bin/python" "$SHARED/make_hf_cache.py" "$HARNESS/hf_home"
(cd "$HARNESS/webui" && HF_HOME="$HARNESS/hf_home" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  "$HARNESS/venv/bin/python" "$SHARED/make_tiny_ckpt.py" "$HARNESS/webui")
mkdir -p "$HARNESS/checkpoints"
cp "$HARNESS/webui/models/Stable-diffusion/tiny.safetensors" "$HARNESS/webui/models/Stable-diffusion/tiny.yaml" \
  "$HARNESS/checkpoints/"
cp "$SHARED/run_webui.sh" "$HARNESS/run_webui.sh"
echo "harness ready: $HARNESS"
