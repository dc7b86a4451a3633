"""AUTOMATIC1111 stable-diffusion-webui's API on this server (/sdapi/v1/...)."""
