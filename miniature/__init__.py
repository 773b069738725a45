"""The miniature world: the project's own tiny weights, trained from its own synthetic corpus.

No weights can be downloaded on any machine this project runs on, so every model in the demo and
the tests would otherwise be random. This package renders a synthetic world (datasets/sample's
generator at scale, with its true masks), trains a tiny SAM2 teacher, a tiny VAE and a tiny base
student on it, fine-tunes the ablation arms, and writes the weights where a user's real checkpoints
go (`teacher.checkpoint`, `encoders.model`, `student.model` folders). It sits on top of `stages/`
like `pipeline/`: it imports stages, nothing in stages imports it.
"""
