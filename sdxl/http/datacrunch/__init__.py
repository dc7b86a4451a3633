"""The DataCrunch SDXL endpoint: `POST /v1/images/stable-diffusion-xl/generate`."""
