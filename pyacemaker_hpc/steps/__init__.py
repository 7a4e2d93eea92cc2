"""The seven steps of the distillation, the plain DFT loop and the evaluation: one module
each. A step reads typed inputs from the campaign, writes typed outputs back, and never
reaches into another step's internals."""
