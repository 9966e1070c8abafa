"""The ways :class:`llcuda.engine.InferenceEngine` runs a model, behind one interface (:mod:`.base`)."""
