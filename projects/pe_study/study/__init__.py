"""The position-encoding study behind ``projects/pe_study/run.py``.

Every encoding of :data:`~projects.pe_study.study.encodings.ROWS` is
trained with the same small ViT and budget, then tested without fine-tuning at
1x, 1.5x, 2x and 3x its training size (the extrapolation protocol of CPVT,
RoPE-ViT and LookHere), on

(a) **segmentation** (:mod:`.segmentation`): the study's generated ADE20K-format
    set (demo data variant ``'seg_frame_relation'``), whose classes are defined
    by colour, by the half of the image frame, or by the side of a neighbour, in
    the same images, through the real mmseg machinery (the demo UPerNet config
    at half resolution); per-class IoU grouped by what defines the class, and
    the backbone's equivariance;
(b) **digits** (:mod:`.digits`): scikit-learn's bundled 8x8 handwritten digits
    (real data, 1797 images), upscaled to 16x16 on a 24x24 canvas, trained with
    a plain PyTorch loop on :class:`~mmsape.models.PosEncViT` with the digits
    centred or randomly shifted; tested resized and padded to other sizes, on
    shifted digits, and for per-block translation equivariance.

:mod:`.jobs` fixes the protocol (seeds, epochs, iterations) and runs every
training as its own job on single-thread worker processes; :mod:`.report`
writes the markdown report, its findings and the verdict on issue 12's goal
from the JSON results.
"""
