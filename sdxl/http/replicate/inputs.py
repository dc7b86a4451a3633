"""A prediction's `input` on the Replicate API: the predictor's inputs under their own names.

Checked once, when the prediction is created (`sdxl.inputs.rules`): numbers may come as strings
("0.8", as the Replicate guide's JavaScript sends them) and null means "not given". The checked
input is stored, and the Request the check made is what the engine runs (handed to the job
runtime with it); a Request is made again from the stored text only when the prediction is
recovered (a restart, another replica: `sdxl.runtime.stored_inputs`), and the engine checks the
model's rules when it prepares the job.
"""

from __future__ import annotations

from sdxl.config import COG_INPUTS
from sdxl.http.wire import Wire
from sdxl.inputs.surface import Field, Surface

REPLICATE = Surface(fields=tuple(Field(name, name) for name in COG_INPUTS), null_is_unset=True)
WIRE = Wire(numbers_from_strings=True)  # the Replicate guide's JavaScript sends "0.8"
