"""The position-encoding study behind ``projects/pe_study/run.py``.

Every row of :data:`~projects.pe_study.study.encodings.ROWS` (a position
encoding, or a stack of them, read from config files) trains the same small ViT
segmenter on the study's generated set (:mod:`.dataset`: classes defined by
colour, by the image frame, by a neighbour and by a distant twin), paired by
seed, and is measured without fine-tuning at 1x..3x its training size (padded
and resized), under translation and on distant twins (:mod:`.segmentation`).
:mod:`.jobs` fixes the protocol and runs every training as its own job on
single-thread worker processes; :mod:`.stats` makes the paired comparisons;
:mod:`.report` writes the markdown report, the power table and the verdicts.
"""
