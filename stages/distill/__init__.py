"""Stage two: distil SAM2's bidirectional motion structure into CogVideoX (docs/method.md).

student.py (load + LoRA), tap.py (block-L features), projector.py (to SAM2 space + mask head),
losses.py (L_diff, L_feat and baselines), export.py (LoRA in the stock diffusers format).
"""
