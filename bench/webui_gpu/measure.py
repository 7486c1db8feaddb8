"""What a user sees in the running WebUI, through its API: SD Unet None against Automatic (our engines).

    python measure.py --url http://127.0.0.1:7870 --out DIR --parts sd15,lora,controlnet,profile [--tiny]
    python measure.py ... --parts medvram            (against a WebUI started with --medvram)

Parts: sd15 / sdxl (txt2img, two samplers, batch 1 and 4; for SD1.5 also hires fix 2x and img2img;
engines built through our API route first), lora, controlnet, profile (SD1.5, and SDXL when its part
ran), medvram. Writes DIR/<label>.json (rows as they come) and DIR/grids/*.png (None | engine | 8 x
difference), and prints a table.

How the numbers are computed:
- wall_s: the API request's wall time (text encoder, sampling, VAE decode, image encoding: what a
  user waits); s_per_image = wall_s / batch.
- it_s: sampler steps / seconds of the WebUI's sampling loop, timed inside its process by the bench
  helper extension (a CUDA synchronize before and after the loop; steps = CFG denoiser calls), the
  figure the WebUI's own progress bar shows; for hires fix, both passes together.
- first: the first generation of that setting (after start, after switching SD Unet, after a LoRA
  change); steady: the median of --repeats generations after it.
- peak VRAM: torch.cuda.max_memory_allocated in the WebUI's process over the steady generations.
- correctness: each engine image against None's image of the same seed: max and mean |difference|
  over all pixels and channels (0-255), and PSNR.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "real_webui"))
from webui_client import WebUI, trt_value  # noqa: E402

SAMPLERS = ("Euler a", "DPM++ 2M Karras")
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
SEED = 1234


class Bench:
    def __init__(self, args):
        self.webui = WebUI(args.url)
        self.args, self.out = args, args.out
        self.rows: list[dict] = []
        (self.out / "grids").mkdir(parents=True, exist_ok=True)
        self.path = self.out / f"{args.label}.json"

    # --- requests -------------------------------------------------------------------------------
    def post(self, path: str, body: dict | None = None) -> dict:
        status, answer = self.webui.request("POST", path, body or {})
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {str(answer)[:500]}")
        return answer

    def generate(self, unet: str, *, img2img: bool = False, **fields) -> dict:
        """One generation: its images (uint8 arrays), infotext's TensorRT value, wall time, samplings."""
        self.post("/bench/v1/reset")
        body = {"prompt": PROMPT, "negative_prompt": "", "steps": self.args.steps, "seed": SEED, "cfg_scale": 7,
                "batch_size": 1, "override_settings": {"sd_unet": unet}, "override_settings_restore_afterwards": True,
                "save_images": False, **fields}
        started = time.perf_counter()
        answer = self.post("/sdapi/v1/img2img" if img2img else "/sdapi/v1/txt2img", body)
        wall = time.perf_counter() - started
        _, stats = self.webui.request("GET", "/bench/v1/stats")
        info = json.loads(answer["info"])
        images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"))
                  for b in answer["images"][:body["batch_size"]]]
        steps = sum(s["steps"] for s in stats["samplings"])
        seconds = sum(s["seconds"] for s in stats["samplings"])
        return {"images": images, "trt": trt_value(info["infotexts"][0]), "wall_s": wall, "steps": steps,
                "sampling_s": seconds, "it_s": steps / seconds if seconds else None, "stats": stats}

    def measure(self, name: str, unet: str, reference: dict | None = None, **fields) -> dict:
        """A first generation, then --repeats more: one row (the first generation's images come back
        for the next row's comparison)."""
        first = self.generate(unet, **fields)
        steady = [self.generate(unet, **fields) for _ in range(self.args.repeats)]
        batch = fields.get("batch_size", 1)
        median = lambda key: statistics.median(g[key] for g in steady if g[key] is not None) if steady else None  # noqa: E731
        row = {"scenario": name, "unet": unet, "batch": batch, "sampler": fields.get("sampler_name"),
               "px": fields.get("width"), "trt": first["trt"], "steps": first["steps"],
               "first": {k: first[k] for k in ("wall_s", "sampling_s", "it_s")},
               "steady": {"wall_s": median("wall_s"), "s_per_image": median("wall_s") / batch, "it_s": median("it_s"),
                          "sampling_s": median("sampling_s"), "n": len(steady)},
               "peak_vram_bytes": (steady[-1] if steady else first)["stats"]["memory"].get("max_allocated_bytes")}
        if reference is not None:
            row["correctness"] = compare(reference["images"], first["images"])
            grid(reference["images"][0], first["images"][0], self.out / "grids" / f"{slug(name)}.png")
        self.record(row)
        return first

    def record(self, row: dict) -> None:
        row.update(label=self.args.label, part=self.part, attention=self.args.attention)
        self.rows.append(row)
        self.path.write_text(json.dumps(self.rows, indent=1))
        steady, first = row.get("steady", {}), row.get("first", {})
        print(f"[measure] {row['part']:<10} {row['scenario'][:44]:<44} {row.get('unet', ''):<9} "
              f"first {fmt(first.get('wall_s'))} s, steady {fmt(steady.get('wall_s'))} s "
              f"{fmt(steady.get('it_s'))} it/s {row.get('correctness', '')} {row.get('trt', '')[:60]}", flush=True)

    # --- model setup ------------------------------------------------------------------------------
    def load(self, model: str) -> None:
        name = f"bench_{model}.safetensors"
        _, options = self.webui.request("GET", "/sdapi/v1/options")
        if str(options.get("sd_model_checkpoint", "")).startswith(name):
            return
        started = time.perf_counter()
        self.post("/sdapi/v1/options", {"sd_model_checkpoint": name})
        self.record({"scenario": f"load bench_{model}", "seconds": time.perf_counter() - started})

    def px(self, model: str) -> int:
        return 64 if self.args.tiny else {"sd15": 512, "sdxl": 1024}[model]

    def build(self, model: str, px: int, batch: int, controlnet: bool = False) -> None:
        tiny = self.args.tiny
        static = lambda n: {"min": n, "opt": n, "max": n}  # noqa: E731
        body = {"backend": "onnxruntime" if tiny else "torch", "precision": "fp32" if tiny else "fp16",
                "profile": {"batch": {"min": 1, "opt": batch, "max": batch}, "height": static(px), "width": static(px),
                            "tokens": static(75)}, "controlnet": controlnet}
        started = time.perf_counter()
        job = self.webui.build(body, timeout=1200)
        row = {"scenario": f"build {model} {px}px batch 1-{batch}{' ControlNet' if controlnet else ''}",
               "seconds": time.perf_counter() - started, "state": job["state"], "error": job.get("error")}
        self.record(row)
        if job["state"] != "done":
            raise RuntimeError(f"build failed: {job.get('error')}")

    # --- parts --------------------------------------------------------------------------------------
    def txt2img_matrix(self, model: str) -> None:
        self.load(model)
        px = self.px(model)
        refs = {}
        for sampler in SAMPLERS:
            for batch in (1, 4):
                fields = dict(sampler_name=sampler, batch_size=batch, width=px, height=px)
                refs[sampler, batch] = self.measure(f"{model} txt2img {sampler} b{batch}", "None", **fields)
        if self.args.engines:
            self.engine_matrix(model, px, refs)
        if model == "sd15":
            self.hires_and_img2img(model, px, refs["Euler a", 1])

    def engine_matrix(self, model: str, px: int, refs: dict) -> None:
        # SDXL: one engine for batch 1-4 (it covers batch 1 too); each SDXL build costs 100-250 s of
        # a call's 560 (the first SDXL build on the H100 took 254 s and used the rest of the call)
        for batch in (1, 4) if model == "sd15" else (4,):
            self.build(model, px, batch)
        for sampler in SAMPLERS:
            for batch in (1, 4):
                fields = dict(sampler_name=sampler, batch_size=batch, width=px, height=px)
                self.measure(f"{model} txt2img {sampler} b{batch}", "Automatic", refs[sampler, batch], **fields)

    def hires_and_img2img(self, model: str, px: int, txt2img_reference: dict) -> None:
        hires = dict(sampler_name="Euler a", width=px, height=px, enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                     denoising_strength=0.55, hr_second_pass_steps=self.args.steps)
        init = encode(txt2img_reference["images"][0])
        i2i = dict(sampler_name="Euler a", width=px, height=px, init_images=[init], denoising_strength=0.6,
                   img2img=True)
        ref = self.measure(f"{model} hires fix 2x", "None", **hires)
        if self.args.engines:
            self.build(model, 2 * px, 1)
            self.measure(f"{model} hires fix 2x", "Automatic", ref, **hires)
        ref = self.measure(f"{model} img2img 0.6", "None", **i2i)
        if self.args.engines:
            self.measure(f"{model} img2img 0.6", "Automatic", ref, **i2i)

    def lora(self, model: str) -> None:
        self.load(model)
        px = self.px(model)
        fields = dict(sampler_name="Euler a", width=px, height=px)
        for weight in (1, 0.5):
            tag = f"<lora:bench_{model}_lora:{weight}> "
            ref = self.generate("None", prompt=tag + PROMPT, **fields)
            self.measure(f"{model} LoRA {weight} (first = after enabling/changing)", "Automatic", ref,
                         prompt=tag + PROMPT, **fields)
        plain = self.generate("None", **fields)
        self.measure(f"{model} LoRA off again", "Automatic", plain, **fields)

    def controlnet(self) -> None:
        self.load("sd15")
        status, models = self.webui.request("GET", "/controlnet/model_list?update=true")
        names = [n for n in (models.get("model_list", []) if status == 200 else []) if "bench_control" in n]
        if not names:
            self.record({"scenario": "ControlNet", "error": f"no bench ControlNet listed ({status}: {str(models)[:200]})"})
            return
        px = self.px("sd15")
        self.build("sd15", px, 1, controlnet=True)
        hint = np.random.RandomState(7).randint(0, 255, (px, px, 3), dtype=np.uint8)
        unit = {"enabled": True, "module": "none", "model": names[0], "image": encode(hint), "weight": 1.0,
                "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced",
                "resize_mode": "Crop and Resize", "pixel_perfect": False, "processor_res": px}
        fields = dict(sampler_name="Euler a", width=px, height=px, alwayson_scripts={"ControlNet": {"args": [unit]}})
        ref = self.measure("sd15 ControlNet, one unit", "None", **fields)
        self.measure("sd15 ControlNet, one unit", "Automatic", ref, **fields)

    def profile(self, model: str) -> None:
        self.load(model)
        px = self.px(model)
        fields = dict(sampler_name="Euler a", width=px, height=px)
        self.generate("Automatic", **fields)  # engines loaded, weights read: what follows is steady state
        self.post("/bench/v1/profile", {"timers": True})
        runs = [self.generate("Automatic", **fields) for _ in range(self.args.repeats)]
        self.post("/bench/v1/profile", {"timers": False, "torch_profiler": True})
        traced = self.generate("Automatic", **fields)
        (self.out / f"torch_profile_{model}.txt").write_text(traced["stats"]["torch_profile"])
        steps = sum(r["steps"] for r in runs)
        seconds = sum(r["sampling_s"] for r in runs)
        timers: dict[str, dict] = {}
        for r in runs:
            for name, t in r["stats"]["timers"].items():
                entry = timers.setdefault(name, {"calls": 0, "seconds": 0.0})
                entry["calls"] += t["calls"]
                entry["seconds"] += t["seconds"]
        per_step = {name: t["seconds"] / steps * 1000 for name, t in timers.items()}
        hook_all = per_step.get("hook forward, all (CPU)", 0.0)
        engine_cpu = per_step.get("engine call", 0.0)
        step_ms = seconds / steps * 1000
        row = {"scenario": f"{model} profile, Euler a b1, Automatic", "step_ms": step_ms, "it_s": steps / seconds,
               "ms_per_step": per_step, "hook_own_cpu_ms_per_step": hook_all - engine_cpu,
               "hook_share_of_step": (hook_all - engine_cpu) / step_ms, "timers": timers}
        self.record(row)
        for name, ms in sorted(per_step.items()):
            print(f"[profile] {model} {name:<48} {ms:8.3f} ms/step", flush=True)
        print(f"[profile] {model} step {step_ms:.2f} ms; hook's own CPU work {hook_all - engine_cpu:.3f} ms/step = "
              f"{100 * (hook_all - engine_cpu) / step_ms:.2f}% of a step", flush=True)

    def medvram(self, models: list[str]) -> None:
        for model in models:
            self.load(model)
            px = self.px(model)
            fields = dict(sampler_name="Euler a", width=px, height=px)
            ref = self.measure(f"{model} --medvram txt2img Euler a b1", "None", **fields)
            self.measure(f"{model} --medvram txt2img Euler a b1", "Automatic", ref, **fields)

    def run(self, parts: list[str]) -> int:
        failed = 0
        for part in parts:
            self.part = part
            try:
                if part in ("sd15", "sdxl"):
                    self.txt2img_matrix(part)
                elif part == "lora":
                    for model in self.args.lora_models.split(","):
                        self.lora(model)
                elif part == "controlnet":
                    self.controlnet()
                elif part == "profile":
                    for model in self.args.profile_models.split(","):
                        self.profile(model)
                elif part == "medvram":
                    self.medvram(self.args.medvram_models.split(","))
                else:
                    raise ValueError(f"unknown part {part}")
            except Exception as e:  # one part failing must not lose the others' rows
                failed += 1
                self.record({"scenario": f"{part} FAILED", "error": f"{type(e).__name__}: {e}"})
        return failed


def compare(reference: list[np.ndarray], images: list[np.ndarray]) -> dict:
    a = np.stack(reference).astype(np.float64)
    b = np.stack(images).astype(np.float64)
    if a.shape != b.shape:
        return {"error": f"shapes differ: {a.shape} vs {b.shape}"}
    diff = np.abs(a - b)
    mse = float((diff ** 2).mean())
    return {"max": int(diff.max()), "mean": round(float(diff.mean()), 3),
            "psnr_db": round(float(10 * np.log10(255.0 ** 2 / mse)), 2) if mse else None}  # None: identical


def grid(reference: np.ndarray, image: np.ndarray, path: Path) -> None:
    diff = np.clip(np.abs(reference.astype(np.int16) - image.astype(np.int16)) * 8, 0, 255).astype(np.uint8)
    Image.fromarray(np.concatenate([reference, image, diff], axis=1)).save(path)


def encode(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", default="sd15,lora,controlnet,profile")
    parser.add_argument("--label", default="webui")
    parser.add_argument("--tiny", action="store_true", help="the CPU rehearsal: 64 px, ONNX Runtime fp32 engines")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lora-models", default="sd15")
    parser.add_argument("--profile-models", default="sd15")
    parser.add_argument("--medvram-models", default="sd15")
    parser.add_argument("--attention", default="?", help="the WebUI's cross-attention optimization (its log says which)")
    parser.add_argument("--none-only", dest="engines", action="store_false",
                        help="SD Unet None rows only (a baseline under other WebUI flags): no builds, no engine rows")
    args = parser.parse_args(argv)
    bench = Bench(args)
    bench.part = "setup"
    return 1 if bench.run(args.parts.split(",")) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
