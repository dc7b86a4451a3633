"""Images in and out: input images decoded under one policy, masks fitted, outputs encoded."""
