"""The JSON answers of `POST /v1/images/stable-diffusion-xl/generate`, for its OpenAPI document
(the request body is `sdxl.http.datacrunch.fields`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class GenerateResponse(BaseModel):
    images: list[str] = Field(description="The images, base64-encoded in output_format.")
    seeds: list[int] = Field(description="The seed of each image.")
    nsfw_content_detected: list[bool] = Field(description="Whether each image was flagged.")
    output_format: str = Field(description="The encoding of the images.")
    control_maps: list[str] = Field(
        default_factory=list,
        description="The ControlNet units' control maps, base64-encoded in output_format, one "
        "per unit in order, when return_control_maps is true (else empty). An extension of "
        "this API.",
    )


class ErrorItem(BaseModel):
    field: str | None = Field(description="The request field at fault, if one is.")
    msg: str = Field(description="What is wrong and how to fix it.")
    type: str = Field(description="A short machine-readable kind of error.")
    loc: list[str | int] = Field(description="Where in the request the error is.")


class ValidationErrorBody(BaseModel):
    detail: list[ErrorItem]


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong and what to do about it.")
