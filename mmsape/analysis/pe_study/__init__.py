"""The position-encoding study behind ``tools/analysis/pe_study.py``.

Every encoding of :data:`~mmsape.analysis.encodings.COMPARED_ENCODINGS` is
trained with the same small ViT and budget on

(a) **digits** (:mod:`.digits`): scikit-learn's bundled 8x8 handwritten digits
    (real data, 1797 images), each digit upscaled to 16x16 and centred on a
    24x24 canvas; trained at 24x24 (patch 4, a 6x6 grid) with a plain PyTorch
    loop on :class:`~mmsape.models.PosEncViT`; evaluated without fine-tuning at
    16..48 pixels and non-square 24x48 / 48x24 (the whole canvas resized), on
    digits translated by one patch, and for per-block translation equivariance;
(b) **segmentation** (:mod:`.segmentation`): the generated ADE20K-format demo
    set through the real mmseg machinery (the demo UPerNet config at half
    resolution and a shorter schedule), then the resolution sweep
    (:func:`mmsape.analysis.evaluate_at_sizes`) and the equivariance score;

then :mod:`.report` writes the markdown report from their JSON results.
"""
