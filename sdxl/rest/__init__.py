"""The DataCrunch-style REST API: `POST /v1/images/stable-diffusion-xl/generate`.

`main(argv)` runs the server (`python -m sdxl api`); see `sdxl.rest.server`.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from sdxl.rest.server import main as serve

    return serve(argv)
