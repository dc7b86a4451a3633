"""`python -m sdxl api`: the HTTP APIs over the engine (the DataCrunch endpoint today).

Nothing here imports torch: the port is bound before the model loads.
"""
