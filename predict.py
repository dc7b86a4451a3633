"""Cog surface of the SDXL predictor: input declarations, one call into `sdxl`, outputs.

`cog build` reads this file statically, so every choice, bound and default below is a literal.
They equal the tables in `sdxl/config.py` (tests/test_predict_surface.py checks it).
"""

from typing import List, Optional

from cog import BaseRunner, Input, Path

from sdxl import logs
from sdxl.cog.inputs import checked_inputs, reading_from, staging_folder
from sdxl.cog.outputs import OutputWriter
from sdxl.engine import Engine, EngineSettings
from sdxl.settings.tree import load_settings

SCHEDULERS = [
    "DDIM",
    "DPMSolverMultistep",
    "HeunDiscrete",
    "KarrasDPM",
    "K_EULER_ANCESTRAL",
    "K_EULER",
    "PNDM",
    "LCM",
    "TCD",
]
REFINE_MODES = ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]
TIMESTEP_SPACINGS = ["linspace", "leading", "trailing"]
OUTPUT_FORMATS = ["png", "webp", "jpg"]
STYLES = [
    "3d-model",
    "analog-film",
    "anime",
    "cinematic",
    "comic-book",
    "craft-clay",
    "digital-art",
    "enhance",
    "fantasy-art",
    "isometric",
    "line-art",
    "low-poly",
    "neon-punk",
    "origami",
    "photographic",
    "pixel-art",
    "texture",
]
PROMPT_SYNTAXES = ["plain", "a1111"]
HIRES_UPSCALERS = [
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
    "None",
    "Lanczos",
    "Nearest",
    "4x-UltraSharp",
    "RealESRGAN_x4plus",
]
CONTROL_TYPES = [
    "none",
    "canny",
    "depth",
    "union_openpose",
    "union_depth",
    "union_softedge",
    "union_canny",
    "union_normal",
    "union_segment",
    "union_tile",
    "edge_canny",
    "depth_midas",
]
CONTROL_PREPROCESSORS = ["canny", "depth", "none"]
IP_ADAPTER_MODELS = ["vit-h", "plus", "plus-face"]
ASPECT_RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21"]


class Predictor(BaseRunner):
    def setup(self) -> None:
        """Load base and refiner once, into the engine every prediction goes through."""
        logs.configure(job_lines=False)  # run() prints each job's lines into its own logs
        self.staging = staging_folder()  # cog predict's replicate_weights=@file, as a file
        tree = load_settings()  # every SDXL_* variable, checked before anything loads
        settings = reading_from(EngineSettings.from_tree(tree), self.staging)
        self.engine = Engine(tree.runtime.build(), settings)
        self.engine.load()
        self.outputs = OutputWriter()

    def run(
        self,
        prompt: str = Input(
            description="Input prompt", default="An astronaut riding a rainbow unicorn"
        ),
        negative_prompt: str = Input(
            description="Things the image should not show (empty: none)", default=""
        ),
        prompt_2: Optional[str] = Input(
            description="Prompt for the second text encoder (blank: same as prompt)",
            default=None,
        ),
        negative_prompt_2: Optional[str] = Input(
            description="Negative prompt for text encoder 2 (blank: same as negative_prompt)",
            default=None,
        ),
        style_selected: Optional[str] = Input(
            description="Style preset: wraps the prompt in a template, adds a negative prompt",
            default=None,
            choices=STYLES,
        ),
        image: Optional[Path] = Input(
            description="Input image for img2img or inpaint mode; the output takes its size",
            default=None,
        ),
        mask: Optional[Path] = Input(
            description="Input mask for inpaint mode. Black areas are kept, white areas repainted",
            default=None,
        ),
        width: int = Input(
            description="Width of the output image (multiple of 8; ignored with an image)",
            default=1024,
            ge=256,
            le=2048,
        ),
        height: int = Input(
            description="Height of the output image (multiple of 8; ignored with an image)",
            default=1024,
            ge=256,
            le=2048,
        ),
        aspect_ratio: Optional[str] = Input(
            description="SDXL trained resolution by aspect ratio; overrides width and height",
            default=None,
            choices=ASPECT_RATIOS,
        ),
        num_outputs: int = Input(description="Number of images to output", default=1, ge=1, le=4),
        scheduler: str = Input(description="Scheduler", default="K_EULER", choices=SCHEDULERS),
        num_inference_steps: int = Input(
            description="Number of denoising steps", default=50, ge=1, le=500
        ),
        guidance_scale: float = Input(
            description="Scale for classifier-free guidance", default=7.5, ge=0, le=50
        ),
        guidance_scale_refiner: Optional[float] = Input(
            description="Guidance scale of the refiner (blank: same as guidance_scale)",
            default=None,
            ge=0,
            le=50,
        ),
        prompt_strength: float = Input(
            description="Prompt strength for img2img / inpaint. 1.0 replaces the image fully",
            default=0.8,
            ge=0,
            le=1,
        ),
        seed: Optional[int] = Input(
            description="Random seed (blank: random). Image i of a batch uses seed + i",
            default=None,
            ge=0,
            le=4294967295,
        ),
        refine: str = Input(
            description="Which refine style to use", default="no_refiner", choices=REFINE_MODES
        ),
        high_noise_frac: float = Input(
            description="For expert_ensemble_refiner, the fraction of noise the base removes",
            default=0.8,
            ge=0,
            le=1,
        ),
        refine_steps: Optional[int] = Input(
            description="For base_image_refiner, refiner steps run (blank: num_inference_steps)",
            default=None,
            ge=1,
            le=500,
        ),
        timestep_spacing: Optional[str] = Input(
            description="Timestep spacing (blank: the scheduler config's own)",
            default=None,
            choices=TIMESTEP_SPACINGS,
        ),
        apply_watermark: bool = Input(
            description="Apply the invisible SDXL watermark to the outputs", default=True
        ),
        lora_scale: float = Input(
            description="LoRA additive scale (only with trained weights or a LoRA)",
            default=0.6,
            ge=0,
            le=2,
        ),
        replicate_weights: Optional[str] = Input(
            description="URL of a Replicate SDXL trainer tar (LoRA or fine-tuned UNet, with its "
            "tokens), or of a LoRA .safetensors (diffusers, peft or kohya format)",
            default=None,
        ),
        disable_safety_checker: bool = Input(
            description="Disable the safety checker for generated images", default=False
        ),
        output_format: str = Input(
            description="Format of the output images", default="png", choices=OUTPUT_FORMATS
        ),
        output_quality: int = Input(
            description="Quality of webp / jpg outputs (ignored for png)", default=80, ge=1, le=100
        ),
        cache_interval: int = Input(
            description="DeepCache: compute the UNet's deep features every this many steps and "
            "reuse them between (1: off; 3 is about 2x faster, with a small cost in quality)",
            default=1,
            ge=1,
            le=10,
        ),
        prompt_syntax: str = Input(
            description="How prompts are read: plain text, or AUTOMATIC1111's language "
            "((word:1.3), (word), [word], BREAK)",
            default="plain",
            choices=PROMPT_SYNTAXES,
        ),
        loras: Optional[str] = Input(
            description="LoRAs applied together, each at its weight: comma-separated "
            "name[:weight] (the server's LoRAs, offset) or https URL of a .safetensors[:weight]; "
            "weights -2..2, 1 when left out",
            default=None,
        ),
        hires_scale: Optional[float] = Input(
            description="Hires fix: a second, img2img pass at this many times the size (both "
            "sides), on the first image upscaled by hires_upscaler; leave blank for none",
            default=None,
            ge=1,
            le=4,
        ),
        hires_upscaler: str = Input(
            description="Hires fix: how the first image is upscaled: Latent* interpolate its "
            "latents; None, Lanczos and Nearest resize its pixels; the others are ESRGAN models",
            default="Latent",
            choices=HIRES_UPSCALERS,
        ),
        hires_steps: int = Input(
            description="Hires fix: steps of the second pass (0: num_inference_steps)",
            default=0,
            ge=0,
            le=500,
        ),
        hires_strength: float = Input(
            description="Hires fix: how much the second pass changes the upscaled image",
            default=0.7,
            ge=0,
            le=1,
        ),
        controlnet_1: str = Input(
            description="ControlNet 1: the control type (canny, depth: dedicated ControlNets; "
            "union_*: the union model; edge_canny and depth_midas mean canny and depth)",
            default="none",
            choices=CONTROL_TYPES,
        ),
        controlnet_1_image: Optional[Path] = Input(
            description="ControlNet 1: the control image (stretched to the output size)",
            default=None,
        ),
        controlnet_1_preprocessor: Optional[str] = Input(
            description="ControlNet 1: how the image becomes a control map (blank: the "
            "type's own; none: the image is a map already, as union types other than canny "
            "and depth need)",
            default=None,
            choices=CONTROL_PREPROCESSORS,
        ),
        controlnet_1_conditioning_scale: float = Input(
            description="ControlNet 1: how strongly the control map steers the image",
            default=0.75,
            ge=0,
            le=4,
        ),
        controlnet_1_start: float = Input(
            description="ControlNet 1: the fraction of the steps where the control starts",
            default=0.0,
            ge=0,
            le=1,
        ),
        controlnet_1_end: float = Input(
            description="ControlNet 1: the fraction of the steps where the control ends",
            default=1.0,
            ge=0,
            le=1,
        ),
        controlnet_2: str = Input(
            description="ControlNet 2: the control type (canny, depth: dedicated ControlNets; "
            "union_*: the union model; edge_canny and depth_midas mean canny and depth)",
            default="none",
            choices=CONTROL_TYPES,
        ),
        controlnet_2_image: Optional[Path] = Input(
            description="ControlNet 2: the control image (stretched to the output size)",
            default=None,
        ),
        controlnet_2_preprocessor: Optional[str] = Input(
            description="ControlNet 2: how the image becomes a control map (blank: the "
            "type's own; none: the image is a map already, as union types other than canny "
            "and depth need)",
            default=None,
            choices=CONTROL_PREPROCESSORS,
        ),
        controlnet_2_conditioning_scale: float = Input(
            description="ControlNet 2: how strongly the control map steers the image",
            default=0.75,
            ge=0,
            le=4,
        ),
        controlnet_2_start: float = Input(
            description="ControlNet 2: the fraction of the steps where the control starts",
            default=0.0,
            ge=0,
            le=1,
        ),
        controlnet_2_end: float = Input(
            description="ControlNet 2: the fraction of the steps where the control ends",
            default=1.0,
            ge=0,
            le=1,
        ),
        controlnet_3: str = Input(
            description="ControlNet 3: the control type (canny, depth: dedicated ControlNets; "
            "union_*: the union model; edge_canny and depth_midas mean canny and depth)",
            default="none",
            choices=CONTROL_TYPES,
        ),
        controlnet_3_image: Optional[Path] = Input(
            description="ControlNet 3: the control image (stretched to the output size)",
            default=None,
        ),
        controlnet_3_preprocessor: Optional[str] = Input(
            description="ControlNet 3: how the image becomes a control map (blank: the "
            "type's own; none: the image is a map already, as union types other than canny "
            "and depth need)",
            default=None,
            choices=CONTROL_PREPROCESSORS,
        ),
        controlnet_3_conditioning_scale: float = Input(
            description="ControlNet 3: how strongly the control map steers the image",
            default=0.75,
            ge=0,
            le=4,
        ),
        controlnet_3_start: float = Input(
            description="ControlNet 3: the fraction of the steps where the control starts",
            default=0.0,
            ge=0,
            le=1,
        ),
        controlnet_3_end: float = Input(
            description="ControlNet 3: the fraction of the steps where the control ends",
            default=1.0,
            ge=0,
            le=1,
        ),
        canny_low_threshold: int = Input(
            description="Canny preprocessor: the low hysteresis threshold",
            default=100,
            ge=1,
            le=255,
        ),
        canny_high_threshold: int = Input(
            description="Canny preprocessor: the high hysteresis threshold",
            default=200,
            ge=1,
            le=255,
        ),
        return_control_maps: bool = Input(
            description="Also return the control maps, before the images", default=False
        ),
        ip_adapter_image: Optional[Path] = Input(
            description="IP-Adapter: a reference image whose style, subject or face the "
            "output follows (blank: none)",
            default=None,
        ),
        ip_adapter_model: str = Input(
            description="IP-Adapter: which of h94's SDXL ViT-H adapters (plus: stronger, "
            "plus-face: faces)",
            default="plus",
            choices=IP_ADAPTER_MODELS,
        ),
        ip_adapter_scale: float = Input(
            description="IP-Adapter: how strongly the reference image steers the output",
            default=0.6,
            ge=0,
            le=1,
        ),
        ip_adapter_block_scales: Optional[str] = Input(
            description="IP-Adapter: per-block scales as diffusers' set_ip_adapter_scale takes "
            'them, as JSON (e.g. {"up": {"block_0": [0.0, 1.0, 0.0]}} for style only); blocks '
            "left out get 0; over ip_adapter_scale",
            default=None,
        ),
    ) -> List[Path]:
        inputs = dict(locals())
        del inputs["self"]
        loras = self.engine.lora_check(None)  # Cog has no tenant: the shared LoRAs, offset
        with checked_inputs(inputs, self.engine.settings.caps, self.staging, loras) as checked:
            # The engine's log lines are printed here, in the prediction's thread, so that they
            # land in its logs; Cog's cancel, raised in this thread, cancels the job.
            result = self.engine.run(checked.request(), on_log=print)
        written = self.outputs.write(result, output_format, output_quality)  # flagged left out
        self.record_metric("seeds", [out.seed for _, out in written if not out.control_map])
        self.record_metric("mode", result.mode)
        self.record_metric("refine", refine)
        return [Path(path) for path, _ in written]
