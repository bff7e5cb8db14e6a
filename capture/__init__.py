"""The hard-example capture service: the frames of the samples a deployment found hard,
kept with their decisions in a folder for labelling."""
