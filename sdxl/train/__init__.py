"""Fine-tuning, as Replicate's SDXL trainer does it (pivotal tuning: new tokens in both text
encoders, a LoRA on the UNet's attention or a full fine-tune), its defects fixed:

- `options`: the trainer's inputs (the reference's 22, with bounds) and their rules;
- `archive`: the images archive read without trusting it; concepts and captions;
- `preprocess`: masks (CLIPSeg, faces), crops around them, upscaling, automatic captions;
- `trainable`: what a training trains, built beside the served models without changing them;
- `loop`: the training steps, checkpoints and resume; `output`: trained_model.tar.
"""
