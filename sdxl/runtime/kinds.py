"""The kinds of stored jobs, one spelling each."""

PREDICTION, TRAINING = "prediction", "training"  # a stored job's kind (the store's Turn.kind)
CLAIMED_KINDS = ("predictions", "trainings")  # SDXL_JOB_KINDS' values: what a replica claims
