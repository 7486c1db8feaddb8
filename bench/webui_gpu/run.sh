#!/usr/bin/env bash
# The real AUTOMATIC1111 WebUI v1.10.1 with this extension, measured through its API (README.md).
#   bench/webui_gpu/run.sh [--parts checkpoints,sd15,lora,controlnet,profile,sdxl,medvram,cnspeed] [--device cuda|cpu]
#                          [--tiny] [--payload DIR] [--work DIR] [--python PY] [--steps N] [--repeats N]
#                          [--attention auto|sdp] [--none-only]
# On the GPU machine: defaults (cuda, full-size models, the machine's python3). CPU rehearsal:
#   --device cpu --tiny --python /work/gpu_rehearsal/venv/bin/python
# Unpacks the payload (prepare.sh's tarballs; parts already unpacked in WORK by an earlier call are
# reused), makes the checkpoints, starts the WebUI (127.0.0.1, --api; on cuda its defaults: fp16,
# automatic attention optimization), waits for "Startup time", runs measure.py, stops it; --medvram
# in a second start. Results under $OUT (default WORK/out): results.json, table.txt, bundle.tar.gz.
# WEBUI_ARGS (environment): more arguments for the WebUI, e.g. "--disable-nan-check".
# CN_MODELS (environment): the models of the cnspeed part (default sd15,sdxl; SDXL's builds alone take
# most of a call, so one call each: CN_MODELS=sd15, then CN_MODELS=sdxl).
# --attention sdp: start the WebUI with --opt-sdp-attention (without it, v1.10.1's "Automatic" picks
# Doggettx on CUDA: priority 90 over SDP's 80/70). --none-only: SD Unet None rows only (no builds), a
# baseline under other flags. Every row records the optimization the WebUI's log says it applied.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PARTS=sd15,lora,controlnet,profile DEVICE=cuda TINY=0 PAYLOAD=$REPO/.gpu_payload WORK=/tmp/webui_gpu PY=python3
STEPS=20 REPEATS=3 PORT=${PORT:-7870} ATTENTION=auto NONE_ONLY=0
# The device stops a command at 600 s and returns only what is in $OUT then: each step below gets
# what is left of BUDGET_S, so the results are always written.
BUDGET_S=${BUDGET_S:-560}
while [ $# -gt 0 ]; do
  case $1 in
    --parts) PARTS=$2; shift ;; --device) DEVICE=$2; shift ;; --tiny) TINY=1 ;;
    --payload) PAYLOAD=$2; shift ;; --work) WORK=$2; shift ;; --python) PY=$2; shift ;;
    --steps) STEPS=$2; shift ;; --repeats) REPEATS=$2; shift ;;
    --attention) ATTENTION=$2; shift ;; --none-only) NONE_ONLY=1 ;;
    *) echo "run.sh: unknown argument $1 (see the header of $0)"; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-$WORK/out}
mkdir -p "$WORK" "$OUT"
LOGS=$WORK/logs && mkdir -p "$LOGS"
has() { [[ ",$PARTS," == *",$1,"* ]]; }
say() { echo "[run.sh $(date +%T)] $*"; }
T0=$(date +%s)

# 1. Payload: each tarball carried (PAYLOAD/*/NAME.tar.xz or PAYLOAD/NAME.tar.xz) is unpacked once per
# machine; two calls back to back share /tmp, so a later call finds what an earlier one unpacked.
# The WebUI needs all three; checkpoints and cnspeed need no OpenCV (site-cv), nor does a machine
# whose own Python has it (the GPU image lists opencv-python-headless): then each call carries main/ alone.
NEEDED=(webui site-py)
if [[ ",$PARTS," =~ ,(sd15|sdxl|lora|controlnet|profile|medvram), ]] && ! "$PY" -c 'import cv2' 2>/dev/null; then
  NEEDED+=(site-cv)
fi
for part in webui site-py site-cv; do
  [ -f "$WORK/.unpacked-$part" ] && continue
  tarball=$(ls "$PAYLOAD"/*/"$part.tar.xz" "$PAYLOAD/$part.tar.xz" 2>/dev/null | head -1)
  if [ -z "$tarball" ]; then
    if [[ " ${NEEDED[*]} " == *" $part "* ]]; then
      say "missing $part: $part.tar.xz neither carried (in $PAYLOAD) nor unpacked in $WORK by an earlier call" \
          "on this machine (calls must follow each other within 30 s: README.md)"; exit 3
    fi
    continue
  fi
  dest=$WORK/src; [ "$part" = webui ] || dest=$WORK/site
  mkdir -p "$dest" && tar -xJf "$tarball" -C "$dest" && touch "$WORK/.unpacked-$part" || exit 3
  say "unpacked $part.tar.xz ($(du -sh "$dest" | cut -f1) in $(basename "$dest"))"
done
export PYTHONPATH=$WORK/site:$WORK/src/CLIP${PYTHONPATH:+:$PYTHONPATH}
export HF_HOME=$WORK/src/hf_home HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export GRADIO_ANALYTICS_ENABLED=False DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
WEBUI=$WORK/src/webui
"$PY" -c 'import importlib, sys
names = "torch numpy transformers tokenizers huggingface_hub gradio fastapi pydantic pytorch_lightning onnxruntime cv2 skimage".split()
def version(name):
    try:
        module = importlib.import_module(name)
        return getattr(module, "__version__", getattr(module, "VERSION", "?"))
    except Exception as e:
        return f"not importable ({type(e).__name__})"
import torch
print("python", sys.version.split()[0], "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print(", ".join(f"{n} {version(n)}" for n in names))' 2>&1 | tee "$LOGS/versions.txt"
"$PY" -m pip list --format=freeze > "$LOGS/pip-list.txt" 2>/dev/null

# 2. Checkpoints (and LoRAs), once per machine.
# the models the parts use (controlnet is SD1.5's); the WebUI starts on the first, so an SDXL-only call
# neither makes nor loads SD1.5
MODELS=$( { has sd15 || has controlnet; } && echo sd15; has sdxl && echo sdxl)
MODELS=$(echo $MODELS | tr ' ' ','); has checkpoints && MODELS=sd15,sdxl; MODELS=${MODELS:-sd15}
CKPT=$WORK/checkpoints
TINYFLAG=(); [ "$TINY" = 1 ] && TINYFLAG=(--tiny)
say "checkpoints: $MODELS"
(cd "$WEBUI" && "$PY" "$HERE/make_checkpoints.py" "$WEBUI" "$CKPT" --models "$MODELS" --device "$DEVICE" \
  "${TINYFLAG[@]}") 2>&1 | tee -a "$LOGS/make_checkpoints.log" || { say "make_checkpoints failed"; exit 4; }

# 3. The WebUI's data folder: checkpoints, LoRAs, this extension (a copy), the bench helper.
DATA=$WORK/data
mkdir -p "$DATA/models/Stable-diffusion" "$DATA/models/Lora" "$DATA/extensions"
for f in "$CKPT"/*.safetensors "$CKPT"/*.yaml; do [ -e "$f" ] && ln -sf "$f" "$DATA/models/Stable-diffusion/"; done
for f in "$CKPT"/Lora/*.safetensors; do ln -sf "$f" "$DATA/models/Lora/"; done
[ -e "$DATA/models/VAE-approx" ] || cp -r "$WEBUI/models/VAE-approx" "$DATA/models/VAE-approx"
# copied over an earlier copy: this call's code, the engines built by an earlier call kept
mkdir -p "$DATA/extensions/sd-unet-trt"
tar -C "$REPO" --exclude=./.git --exclude=./.gpu_payload --exclude=./.whl --exclude='__pycache__' -cf - . |
  tar -x -C "$DATA/extensions/sd-unet-trt"
rm -rf "$DATA/extensions/bench-helper" && cp -r "$HERE/bench_helper" "$DATA/extensions/bench-helper"
if has controlnet; then
  [ -e "$DATA/extensions/sd-webui-controlnet" ] || ln -s "$WORK/src/sd-webui-controlnet" "$DATA/extensions/sd-webui-controlnet"
else
  rm -f "$DATA/extensions/sd-webui-controlnet"
fi
# Every key a request overrides is in the config (else overrides leak into later requests). Live
# previews stay on as for a user, "Approx cheap": "Approx NN" downloads SDXL's approximation model.
cat > "$DATA/config.json" <<EOF
{"sd_model_checkpoint": "bench_${MODELS%%,*}.safetensors", "sd_unet": "None", "sd_vae": "Automatic",
 "CLIP_stop_at_last_layers": 1, "samples_save": false, "grid_save": false, "lora_functional": false,
 "show_progress_type": "Approx cheap"}
EOF
export BENCH_TINY=$TINY BENCH_CONTROLNET=1

start_webui() {  # start_webui LOGNAME EXTRA_ARGS...: the WebUI in the background; WEBUI_PID
  local log=$LOGS/$1.log; shift
  local device_args=()
  [ "$DEVICE" = cpu ] && device_args=(--use-cpu all --no-half --no-half-vae --precision full --skip-torch-cuda-test)
  (cd "$WEBUI" && exec "$PY" launch.py --skip-prepare-environment --skip-install --skip-version-check \
    --api --server-name 127.0.0.1 --port "$PORT" --data-dir "$DATA" --no-download-sd-model --do-not-download-clip \
    "${device_args[@]}" ${WEBUI_ARGS:-} "$@") > "$log" 2>&1 &
  WEBUI_PID=$!
  local started; started=$(date +%s)
  until grep -q "Startup time" "$log"; do
    if ! kill -0 "$WEBUI_PID" 2>/dev/null || [ $(($(date +%s) - started)) -gt 600 ]; then
      say "the WebUI did not start; its log's end:"; tail -30 "$log"; return 1
    fi
    sleep 1
  done
  say "WebUI up in $(($(date +%s) - started)) s: $(grep -m1 'Startup time' "$log")"
  # The checkpoint it loads at start must be in before any request: a checkpoint change meanwhile
  # loads a second model in parallel, and the WebUI's load_state_dict patches then stay in place
  # (torch.nn.Module.load_state_dict left without its `assign` argument for the rest of the session).
  until grep -q -e "Model loaded in" -e "Stable diffusion model failed to load" "$log"; do
    if ! kill -0 "$WEBUI_PID" 2>/dev/null || [ $(($(date +%s) - started)) -gt 900 ]; then
      say "the WebUI loaded no model; its log's end:"; tail -30 "$log"; return 1
    fi
    sleep 1
  done
  say "$(grep -m1 -e 'Model loaded in' -e 'Stable diffusion model failed to load' "$log")"
}
left() { echo $((BUDGET_S - ($(date +%s) - T0) - 15)); }  # seconds this call may still spend
within_budget() {  # within_budget NAME COMMAND...: COMMAND under what is left, or a line why not
  local name=$1; shift
  if [ "$(left)" -lt 30 ]; then say "skipped $name: $(left) s left of BUDGET_S=$BUDGET_S"; return 1; fi
  timeout "$(left)" "$@"
}
attention() { grep -m1 -o 'Applying attention optimization: [^.]*' "$1" | sed 's/.*: //'; }
stop_webui() { kill "$WEBUI_PID" 2>/dev/null; wait "$WEBUI_PID" 2>/dev/null; return 0; }  # its exit code is SIGTERM's

# results stay in WORK (a later call's bundle holds the earlier calls' too); $OUT gets 3 files
RESULTS=$WORK/results && mkdir -p "$RESULTS"
MEASURE=(--url "http://127.0.0.1:$PORT" --out "$RESULTS" --steps "$STEPS" --repeats "$REPEATS")
[ "$NONE_ONLY" = 1 ] && MEASURE+=(--none-only)
[ "$ATTENTION" = sdp ] && WEBUI_ARGS="${WEBUI_ARGS:-} --opt-sdp-attention"
SUFFIX=$([ "$ATTENTION" = sdp ] && echo _sdp)$([ "$NONE_ONLY" = 1 ] && echo _none)
[ "$TINY" = 1 ] && MEASURE+=(--tiny)
# lora and profile run for the models whose matrix part is in this call (SD1.5 when neither is)
PROFILE_MODELS=$(echo "$PARTS" | tr ',' '\n' | grep -x -e sd15 -e sdxl | paste -sd, -)
PROFILE_MODELS=${PROFILE_MODELS:-sd15}
FAILED=0
MAIN_PARTS=$(echo "$PARTS" | tr ',' '\n' | grep -v -x -e medvram -e cnspeed -e checkpoints | paste -sd, -)
if [ -n "$MAIN_PARTS" ]; then
  start_webui webui && {
    within_budget measure "$PY" "$HERE/measure.py" "${MEASURE[@]}" --label "webui_${MAIN_PARTS//,/_}$SUFFIX" --parts "$MAIN_PARTS" \
      --profile-models "$PROFILE_MODELS" --lora-models "$PROFILE_MODELS" --attention "$(attention "$LOGS/webui.log")" || FAILED=1
    stop_webui
  } || FAILED=1
fi
if has medvram && [ "$(left)" -ge 90 ]; then  # a start and a model load take about a minute
  start_webui webui-medvram --medvram && {
    within_budget medvram "$PY" "$HERE/measure.py" "${MEASURE[@]}" --label "medvram$SUFFIX" --parts medvram \
      --medvram-models "${MEDVRAM_MODELS:-$MODELS}" --attention "$(attention "$LOGS/webui-medvram.log")" || FAILED=1
    stop_webui
  } || FAILED=1
elif has medvram; then
  say "skipped medvram: $(left) s left of BUDGET_S=$BUDGET_S (a start and a load need about 90)"; FAILED=1
fi
if has cnspeed; then  # bench/controlnet_speed.py, outside the WebUI (issue #13's figure)
  CN=(--out "$RESULTS/controlnet_speed" --models "${CN_MODELS:-sd15,sdxl}"); [ "$TINY" = 1 ] && CN=(--out "$RESULTS/controlnet_speed" --models tiny --device cpu)
  say "bench/controlnet_speed.py ${CN[*]}"
  (cd "$REPO/bench" && within_budget controlnet_speed "$PY" controlnet_speed.py "${CN[@]}") 2>&1 | tee "$LOGS/controlnet_speed.log" || FAILED=1
fi

# 4. Results: one JSON, one table, one tarball (logs, grids, profiles): the device returns 8 files at most.
"$PY" "$HERE/report.py" "$RESULTS" "$OUT/results.json" > "$OUT/table.txt" || FAILED=1
tar -czf "$OUT/bundle.tar.gz" -C "$WORK" logs results
say "done in $(($(date +%s) - T0)) s; failed=$FAILED"
cat "$OUT/table.txt"
exit $FAILED
