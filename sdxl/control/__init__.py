"""ControlNet: control models, their preprocessors and control maps."""
