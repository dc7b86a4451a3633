"""The hires fix's upscalers (A1111's names, `sdxl.config.HIRES_UPSCALERS`): latent
interpolation, Pillow resampling and ESRGAN-family models."""
