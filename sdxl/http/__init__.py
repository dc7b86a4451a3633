"""`python -m sdxl api`: one server, four HTTP APIs over the engine (Replicate's prediction API,
the DataCrunch endpoint, OpenAI's Images API, AUTOMATIC1111's), one package per API.

Nothing here imports torch: the port is bound before the model loads.
"""
